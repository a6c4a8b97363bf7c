"""A run directory: its files, the metrics lines, and the check that a directory holds this run (resume)
or none (a fresh start).

``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per epoch, plus epoch 0),
``checkpoint.pt``, ``log.txt``, ``result.json`` and a space's artifacts (e.g. ``genotype.json``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from sldarts.errors import SldartsError

# Keys that may differ between a run and its resumption without changing what it computes (beyond float
# rounding); channels_last also lets runs written before it existed resume.
OPERATIONAL = {"resume", "overwrite", "device", "progress", "workers", "threads", "log_every", "out", "benchmark",
               "logger", "channels_last"}
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json", "log.txt", "genotype.json",
             "loggers.json", "analysis.jsonl", "split.json", "model.pt2")
RUN_DIRS = ("tensorboard", "wandb", "mlruns")  # the dashboards' own files


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash: everything before it is kept
    return rows


def append_line(path: Path, line: str) -> None:
    """Append one JSON line; a full disk is a clear error (the torn line is ignored when read back)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as exc:
        raise SldartsError(f"cannot write {path} ({exc.strerror}); free space and resume=true "
                           "(the last checkpoint is intact)") from None


def fresh_name(default: Path) -> Path:
    """Without ``out=``: ``default`` while it holds no run, else the first ``default-N`` (N = 2, 3, ...) that
    holds none, so the same command run twice gives two runs (as Lightning's version_N)."""
    out, n = default, 1
    while (out / "config.yaml").exists():
        n += 1
        out = default.with_name(f"{default.name}-{n}")
    return out


def prepare_run_dir(cfg: Any, default: Path, main: bool = True) -> tuple[Path, bool]:
    """Create or check the run directory. Returns (path, resume requested and allowed). Without ``out=`` and
    without resume/overwrite, a fresh directory (:func:`fresh_name`); an explicit ``out=`` holding a run is
    refused unless resume or overwrite is asked for."""
    out = Path(cfg.out) if cfg.out else default
    if not cfg.out and not cfg.resume and not cfg.overwrite:
        out = fresh_name(default)
    saved = out / "config.yaml"
    if saved.exists():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = None
        if cfg.overwrite:
            if main:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
                for extra in [*out.glob("cell*"), *(out / d for d in RUN_DIRS if (out / d).exists())]:
                    extra.unlink() if extra.is_file() else shutil.rmtree(extra)
            return out, False
        if not cfg.resume:
            raise SldartsError(f"run directory {out} already holds a run; pass resume=true to continue it, "
                               "overwrite=true to replace it, or out=DIR for a new one")
        if not isinstance(old, dict):
            raise SldartsError(f"{saved} is not a readable config; pass overwrite=true to start again")
        new = cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new) if k not in OPERATIONAL and old.get(k) != new.get(k))
        if diff:
            k = diff[0]
            raise SldartsError(f"run directory {out} holds a different run ({k}={old.get(k)!r} there, "
                               f"{new.get(k)!r} now); use out=DIR for a new run or overwrite=true")
        return out, True
    if out.exists() and not out.is_dir():
        raise SldartsError(f"out={out} is a file, not a directory")
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SldartsError(f"cannot create run directory {out}: {exc.strerror}") from None
    return out, False
