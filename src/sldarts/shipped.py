"""Configs shipped in the package (``sldarts/configs``): found by name from any directory.

``--config nb201-single-sigmoid`` (search) and ``sweep --config table3`` resolve to the package's YAML files
when no file of that name exists; ``sldarts configs`` lists them.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def configs_dir() -> Path:
    """The package's config folder (a real folder: the package is installed as files)."""
    return Path(str(resources.files("sldarts").joinpath("configs")))


def shipped_configs() -> dict[str, Path]:
    """name -> file, search configs first, then sweeps (``sweeps/NAME.yaml`` answers to NAME)."""
    root = configs_dir()
    found = {p.stem: p for p in sorted(root.glob("*.yaml"))}
    found.update({p.stem: p for p in sorted((root / "sweeps").glob("*.yaml")) if p.stem not in found})
    return found


def find_config(path: str | Path) -> Path:
    """PATH itself if it is a file, else the shipped config of that name (with or without .yaml, and with
    a ``configs/`` or ``configs/sweeps/`` prefix as the repository's commands write it); else PATH."""
    p = Path(path)
    if p.is_file():
        return p
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if len(p.parts) == 1 or p.parent.name in ("configs", "sweeps"):
        return shipped_configs().get(name, p)
    return p


def describe() -> list[str]:
    """One line per shipped config: its name and first comment line."""
    lines = []
    for name, p in shipped_configs().items():
        first = next((ln.lstrip("# ").strip() for ln in p.read_text().splitlines() if ln.startswith("#")), "")
        kind = "sweep " if p.parent.name == "sweeps" else "search"
        lines.append(f"{name:<32} {kind} {first}")
    return lines
