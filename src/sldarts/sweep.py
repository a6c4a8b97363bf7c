"""Sweeps: expand a grid of settings × seeds into search runs under one directory, run them in parallel
processes (or print one command per point for a scheduler), and skip or resume what already ran.

A sweep config is YAML with ``base`` (settings of every point), ``grid`` (key: list of values, crossed)
and optional ``variants`` (a list of setting dicts, crossed with the grid as alternatives). On the
command line, ``key=a,b,c`` adds a grid axis and ``key=v`` a base setting (Hydra's comma syntax).
"""

from __future__ import annotations

import itertools
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sldarts.config import load_config, read_yaml
from sldarts.errors import SldartsError


@dataclass
class Point:
    name: str
    settings: dict[str, Any]  # the point's own settings (grid and variant values)

    def run_dir(self, sweep_dir: Path) -> Path:
        return sweep_dir / self.name


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def parse_sweep_args(items: list[str]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``["lr=0.001,0.005", "epochs=50"]`` -> base {epochs: 50}, grid {lr: [0.001, 0.005]}."""
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SldartsError(f"sweep argument {item!r} is not key=value or key=a,b,c")
        values = [yaml.safe_load(v) if v.strip() else None for v in raw.split(",")]
        if len(values) > 1:
            grid[key.strip()] = values
        else:
            base[key.strip()] = values[0]
    return base, grid


def load_sweep(path: str | Path | None, items: list[str]) -> tuple[dict[str, Any], list[Point]]:
    """The base settings and the expanded points of a sweep (config file, then command-line items)."""
    spec = read_yaml(path) if path is not None else {}
    unknown = set(spec) - {"base", "grid", "variants"}
    if unknown and path is not None:
        # a plain search config is a sweep with only a base
        spec = {"base": spec}
    base = dict(spec.get("base") or {})
    grid = {k: list(v) if isinstance(v, list) else [v] for k, v in (spec.get("grid") or {}).items()}
    variants = spec.get("variants") or [{}]
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise SldartsError("sweep config: 'variants' must be a list of setting mappings")
    cli_base, cli_grid = parse_sweep_args(items)
    for k in cli_base:
        grid.pop(k, None)
    base.update(cli_base)
    grid.update(cli_grid)
    for k in ("out", "resume", "overwrite"):
        base.pop(k, None)
    keys = list(grid)
    points: list[Point] = []
    for variant in variants:
        for combo in itertools.product(*(grid[k] for k in keys)):
            settings = {**variant, **dict(zip(keys, combo, strict=True))}
            load_config(None, {**base, **settings})  # validate every point before anything runs
            name = "_".join(f"{k}={_fmt(v)}" for k, v in settings.items()) or "point"
            points.append(Point(name.replace("/", "-"), settings))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SldartsError("sweep: two points have the same settings; remove the duplicate values")
    return base, points


def point_command(sweep_dir: Path, point: Point, resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "sldarts", "search", "--config", str(sweep_dir / "base.yaml")]
    cmd += [f"{k}={_fmt(v)}" for k, v in point.settings.items()]
    cmd += [f"out={point.run_dir(sweep_dir)}", "progress=lines"]
    if resume:
        cmd.append("resume=true")
    return cmd


def status(sweep_dir: Path, point: Point) -> str:
    d = point.run_dir(sweep_dir)
    if (d / "result.json").exists():
        return "done"
    if (d / "checkpoint.pt").exists() or (d / "config.yaml").exists():
        return "partial"
    return "new"


def run_sweep(path: str | Path | None, items: list[str], out: str | Path, parallel: int = 1,
              gpus: list[str] | None = None, print_only: bool = False, log=print, launcher: str = "local",
              slurm: Any = None) -> list[dict[str, Any]]:
    """Run (or print) every unfinished point; returns one dict per point with its status. ``launcher``:
    ``local`` (a process pool here), ``slurm`` or ``submitit-local`` (one submitit job per point)."""
    sweep_dir = Path(out)
    base, points = load_sweep(path, items)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    base_file = sweep_dir / "base.yaml"
    text = yaml.safe_dump(base, sort_keys=False)
    if base_file.exists() and base_file.read_text() != text:
        raise SldartsError(f"{sweep_dir} holds a sweep with other base settings; use another --out")
    base_file.write_text(text)
    (sweep_dir / "points.yaml").write_text(yaml.safe_dump([{"name": p.name, **p.settings} for p in points],
                                                          sort_keys=False))
    todo = [p for p in points if status(sweep_dir, p) != "done"]
    log(f"sweep {sweep_dir}: {len(points)} points, {len(points) - len(todo)} done, {len(todo)} to run")
    if print_only:
        for p in todo:
            print(shlex.join(point_command(sweep_dir, p, status(sweep_dir, p) == "partial")))
        return [{"name": p.name, "status": status(sweep_dir, p)} for p in points]
    if launcher != "local":
        from sldarts.launch import SlurmOptions, run_jobs

        # a requeued job may start while its predecessor still writes its checkpoint: it waits for the lock
        argv = [(p.name, [*point_command(sweep_dir, p, False)[3:], "resume=auto", "lock_wait=300"]) for p in todo]
        failed = run_jobs(sweep_dir, argv, launcher, slurm or SlurmOptions(), log=log)
        if failed:
            raise SldartsError(f"{len(failed)} of {len(todo)} points did not finish ({', '.join(failed[:3])}); see "
                               f"{sweep_dir}/.submitit/*_log.*, fix, and run the same command again to resume them")
        return [{"name": p.name, "status": status(sweep_dir, p)} for p in points]
    slots = [g for g in (gpus or [None]) for _ in range(max(parallel, 1))] if gpus else [None] * max(parallel, 1)
    running: dict[int, tuple[subprocess.Popen, Point, Any]] = {}
    queue = list(todo)
    failed: list[str] = []
    while queue or running:
        for slot, gpu in enumerate(slots):
            if slot in running or not queue:
                continue
            p = queue.pop(0)
            cmd = point_command(sweep_dir, p, status(sweep_dir, p) == "partial")
            env = dict(os.environ)
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = str(gpu)
                cmd.append("device=cuda")
            p.run_dir(sweep_dir).mkdir(parents=True, exist_ok=True)
            logf = open(p.run_dir(sweep_dir) / "sweep.log", "a")
            running[slot] = (subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env), p, logf)
            log(f"started {p.name}" + (f" on GPU {gpu}" if gpu is not None else ""))
        time.sleep(0.2)
        for slot in list(running):
            proc, p, logf = running[slot]
            if proc.poll() is not None:
                logf.close()
                del running[slot]
                if proc.returncode == 0:
                    log(f"finished {p.name}")
                else:
                    failed.append(p.name)
                    tail = (p.run_dir(sweep_dir) / "sweep.log").read_text().strip().splitlines()[-1:]
                    log(f"FAILED {p.name} (exit {proc.returncode}): {tail[0] if tail else ''}")
    if failed:
        raise SldartsError(f"{len(failed)} of {len(todo)} points failed ({', '.join(failed[:3])}...); see their "
                           "sweep.log, fix, and run the same command again to retry only those")
    return [{"name": p.name, "status": status(sweep_dir, p)} for p in points]

