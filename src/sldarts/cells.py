"""What a run directory's search found, and the one resolver from a run, genotype or arch string to
(space, architecture) that retrain, complexity, plot and lookup share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from sldarts.decided import margins
from sldarts.errors import SldartsError
from sldarts.rundir import read_metrics, read_result
from sldarts.spaces import ARCH_SPACE, GENOTYPE_SPACE, SearchSpace, get_space
from sldarts.spaces.base import DERIVE_RULES

_ANNOUNCED: set[str] = set()


def run_space(name: str, run: str | Path) -> SearchSpace:
    """The space a run directory's config names. An import path there is code the user did not name on this
    command line: which file is imported (and so run as Python) is said once, before it is."""
    from sldarts.registry import is_import_path
    from sldarts.spaces import SPACES

    if is_import_path(name) and not name.startswith("<") and name not in SPACES and name not in _ANNOUNCED:
        import sys

        _ANNOUNCED.add(name)
        print(f"sldarts: importing {name.rpartition(':')[0]} (space: {name} in {Path(run) / 'config.yaml'}); "
              "it runs as Python", file=sys.stderr, flush=True)
    return get_space(name)


def _key(space: str, row: dict[str, Any], run: str | Path = ".") -> str:
    if "arch_key" in row:
        return row["arch_key"]
    return run_space(space, run).arch_key


def derive(run_dir: str | Path, rule: str | None = None) -> dict[str, Any]:
    """The derived architecture of a run: from result.json when finished, else the last metrics line.
    Returns {space, arch_key, <arch_key>: arch, param_free_ratio, finished[, epoch]}. With ``rule`` (a
    DERIVE_RULES name) the architecture is derived again from the last recorded weights, by that rule."""
    run = Path(run_dir)
    if rule is not None:
        return _rederive(run, rule)
    if (run / "result.json").exists():
        res = read_result(run)
        key = _key(res["space"], res, run)
        return {"space": res["space"], "arch_key": key, key: res[key], "param_free_ratio": res["param_free_ratio"],
                "finished": True}
    rows = read_metrics(run / "metrics.jsonl")
    if not rows or not (run / "config.yaml").exists():
        raise SldartsError(f"{run} is not a search run directory (no result.json, or no config.yaml and "
                           "metrics.jsonl)")
    space = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("space", ARCH_SPACE)
    key = _key(space, rows[-1], run)
    return {"space": space, "arch_key": key, key: rows[-1][key], "param_free_ratio": rows[-1]["param_free_ratio"],
            "epoch": rows[-1]["epoch"], "finished": False}


def resolve_cell(run_dir: str | Path | None = None, genotype: str | None = None, arch: str | None = None,
                 space: str | None = None) -> tuple[SearchSpace, Any]:
    """(space, architecture) from exactly one of: a search run directory, a genotype (a built-in DARTS cell
    name or JSON file), an architecture text of ``space`` (default: an NB201 arch string)."""
    if sum(bool(v) for v in (run_dir, genotype, arch)) != 1:
        raise SldartsError("give exactly one of a run directory, --genotype NAME_OR_FILE or --arch STRING")
    if run_dir:
        d = derive(run_dir)
        obj = run_space(d["space"], run_dir)
        return obj, d[d["arch_key"]]
    obj = get_space(space or (GENOTYPE_SPACE if genotype else ARCH_SPACE))
    return obj, obj.parse(genotype or arch)


def _rederive(run: Path, rule: str) -> dict[str, Any]:
    if rule not in DERIVE_RULES:
        raise SldartsError(f"unknown derivation rule {rule!r}; choose one of {', '.join(DERIVE_RULES)}")
    rows = read_metrics(run / "metrics.jsonl")
    if not rows or "weights" not in rows[-1] or not (run / "config.yaml").exists():
        raise SldartsError(f"{run} has no recorded weights to derive from (no metrics.jsonl or config.yaml)")
    space_name = (yaml.safe_load((run / "config.yaml").read_text()) or {}).get("space", ARCH_SPACE)
    space = run_space(space_name, run)
    weights = {k: torch.tensor(v) for k, v in rows[-1]["weights"].items()}
    arch, decisions = space.rederive(weights, rule)
    return {"space": space_name, "arch_key": space.arch_key, space.arch_key: arch,
            "param_free_ratio": space.param_free_ratio(arch), "derive": rule, **margins(decisions),
            "epoch": rows[-1]["epoch"], "finished": (run / "result.json").exists()}
