"""Published DARTS-space cells, as data. Usable by name wherever a genotype is accepted."""

from __future__ import annotations

from pathlib import Path

from sldarts.errors import SldartsError
from sldarts.spaces.darts import Genotype, check_genotype, load_genotype

_SHORT = {"sep3": "sep_conv_3x3", "sep5": "sep_conv_5x5", "dil3": "dil_conv_3x3", "dil5": "dil_conv_5x5",
          "max": "max_pool_3x3", "avg": "avg_pool_3x3", "skip": "skip_connect"}

# Each cell: 8 "op input" pairs, two per intermediate node; concat [2, 3, 4, 5].
_CELLS = {
    "DARTS_V1": ("sep3 1, sep3 0, skip 0, sep3 1, skip 0, sep3 1, sep3 0, skip 2",
                 "max 0, max 1, skip 2, max 0, max 0, skip 2, skip 2, avg 0"),
    "DARTS_V2": ("sep3 0, sep3 1, sep3 0, sep3 1, sep3 1, skip 0, skip 0, dil3 2",
                 "max 0, max 1, skip 2, max 1, max 0, skip 2, skip 2, max 1"),
    "PDARTS": ("skip 0, dil3 1, skip 0, sep3 1, sep3 1, sep3 3, sep3 0, dil5 4",
               "avg 0, sep5 1, sep3 0, dil5 2, max 0, dil3 1, dil3 1, dil5 3"),
    "PC_DARTS_CIFAR": ("sep3 1, skip 0, sep3 0, dil3 1, sep5 0, sep3 1, avg 0, dil3 1",
                       "sep5 1, max 0, sep5 1, sep5 2, sep3 0, sep3 3, sep3 1, sep3 2"),
    "PC_DARTS_IMAGENET": ("skip 1, sep3 0, sep3 0, skip 1, sep3 1, sep3 3, sep3 1, dil5 4",
                          "sep3 0, skip 1, dil5 2, max 1, sep3 2, sep3 1, sep5 0, sep3 3"),
    "DRNAS_CIFAR": ("sep3 0, sep5 1, sep3 1, sep3 2, skip 0, sep3 1, sep3 2, dil5 3",
                    "max 0, sep5 1, dil5 2, sep5 1, sep5 1, dil5 3, skip 4, sep5 1"),
    "DRNAS_IMAGENET": ("sep3 1, sep3 0, sep3 0, sep3 1, sep3 0, dil3 3, skip 0, sep3 1",
                       "max 0, sep3 1, sep3 0, skip 2, sep3 0, sep3 2, sep3 3, sep3 1"),
}


def _parse(text: str) -> list[list]:
    out = []
    for item in text.split(","):
        op, src = item.split()
        out.append([_SHORT[op], int(src)])
    return out


GENOTYPES: dict[str, Genotype] = {
    name: check_genotype({"normal": _parse(n), "normal_concat": [2, 3, 4, 5],
                          "reduce": _parse(r), "reduce_concat": [2, 3, 4, 5]}, name)
    for name, (n, r) in _CELLS.items()
}


def resolve_genotype(name_or_file: str | Path) -> Genotype:
    """A built-in name (case-insensitive), a genotype JSON file, or a run directory's genotype.json."""
    key = str(name_or_file).upper()
    if key in GENOTYPES:
        return GENOTYPES[key]
    p = Path(name_or_file)
    if p.is_dir():
        p = p / "genotype.json"
    if p.exists():
        return load_genotype(p)
    raise SldartsError(f"genotype {name_or_file!r} is neither a built-in cell ({', '.join(GENOTYPES)}) "
                       "nor an existing JSON file")
