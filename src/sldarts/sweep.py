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
from sldarts.methods import resolve


@dataclass
class Point:
    name: str
    settings: dict[str, Any]  # the point's own settings (grid and variant values)

    def run_dir(self, sweep_dir: Path) -> Path:
        return sweep_dir / self.name


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


LIST_KEYS = ("logger", "analysis_cells")  # keys whose one value is a comma-separated list: never grid axes


def split_values(raw: str) -> list[tuple[str, bool]]:
    """Split ``a,b,c`` at commas that are neither escaped (``a\\,b``) nor quoted (``"a,b"``); each value
    comes with whether it was quoted or escaped (then it is a literal string, not parsed as YAML)."""
    values: list[tuple[str, bool]] = []
    cur, quote, esc, literal = "", "", False, False
    for ch in raw:
        if esc:
            cur, esc = cur + ch, False
        elif ch == "\\":
            esc = literal = True
        elif quote:
            if ch == quote:
                quote = ""
            else:
                cur += ch
        elif ch in "\"'":
            quote, literal = ch, True
        elif ch == ",":
            values.append((cur, literal))
            cur, literal = "", False
        else:
            cur += ch
    if quote or esc:
        raise SldartsError(f"sweep value {raw!r}: unclosed quote or trailing backslash")
    values.append((cur, literal))
    return values


def parse_sweep_args(items: list[str]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``["lr=0.001,0.005", "epochs=50"]`` -> base {epochs: 50}, grid {lr: [0.001, 0.005]}. A comma inside
    quotes (``key="a,b"``) or escaped (``key=a\\,b``) belongs to the value; list-valued keys (LIST_KEYS) keep
    their whole value."""
    base: dict[str, Any] = {}
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SldartsError(f"sweep argument {item!r} is not key=value or key=a,b,c")
        parts = split_values(raw)
        if key in LIST_KEYS:
            parts = [(",".join(v for v, _ in parts), True)]
        values = [v if literal else (yaml.safe_load(v) if v.strip() else None) for v, literal in parts]
        if len(values) > 1:
            grid[key] = values
        else:
            base[key] = values[0]
    return base, grid


def describe_grid(points: list[Point]) -> str:
    """The axes of a sweep as they will run: each key that varies and its values."""
    axes: dict[str, list[str]] = {}
    for p in points:
        for k, v in p.settings.items():
            if _fmt(v) not in axes.setdefault(k, []):
                axes[k].append(_fmt(v))
    if not axes:
        return "grid: one point (no axis)"
    return "grid: " + " x ".join(f"{k} ({len(v)}: {' | '.join(v)})" for k, v in axes.items()) + \
        f" = {len(points)} points"


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
            resolve(load_config(None, {**base, **settings}))  # validate every point (and its method) first
            name = "_".join(f"{k}={_fmt(v)}" for k, v in settings.items()) or "point"
            points.append(Point(name.replace("/", "-"), settings))
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        raise SldartsError("sweep: two points have the same settings; remove the duplicate values")
    return base, points


def point_command(sweep_dir: Path, point: Point, resume: bool, nproc: int = 1) -> list[str]:
    """The point's search command; with ``nproc`` > 1 under torchrun (one DDP search over nproc processes,
    a free rendezvous port of its own, so points run side by side)."""
    launch = [sys.executable, "-m", "sldarts"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                  "-m", "sldarts"]
    cmd = [*launch, "search", "--config", str(sweep_dir / "base.yaml")]
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
              slurm: Any = None, gpus_per_point: int = 1) -> list[dict[str, Any]]:
    """Run (or print) every unfinished point; returns one dict per point with its status. ``launcher``:
    ``local`` (a process pool here), ``slurm`` or ``submitit-local`` (one submitit job per point).
    ``gpus_per_point`` K > 1: each local point is one torchrun search over K processes, on K of ``gpus``
    (the pool packs points onto the GPUs free at the time; on CPU, K gloo processes)."""
    sweep_dir = Path(out)
    base, points = load_sweep(path, items)
    k = max(gpus_per_point, 1)
    if gpus and k > len(gpus):
        raise SldartsError(f"--gpus-per-point {k} needs at least {k} GPUs in --gpus, got {len(gpus)}")
    log(describe_grid(points))
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
            print(shlex.join(point_command(sweep_dir, p, status(sweep_dir, p) == "partial", k)))
        return [{"name": p.name, "status": status(sweep_dir, p)} for p in points]
    if launcher != "local":
        from sldarts.launch import SlurmOptions, run_jobs

        # a requeued job may start while its predecessor still writes its checkpoint: it waits for the lock
        argv = [(p.name, [*point_command(sweep_dir, p, False)[3:], "resume=auto",
                 "lock_wait=300"]) for p in todo]
        if launcher == "slurm" and slurm is not None and slurm.gpus_per_job > 1:  # K tasks, one DDP search
            argv = [(n, [*a, "device=cuda"]) for n, a in argv]
        failed = run_jobs(sweep_dir, argv, launcher, slurm or SlurmOptions(), log=log)
        if failed:
            raise SldartsError(f"{len(failed)} of {len(todo)} points did not finish ({', '.join(failed[:3])}); see "
                               f"{sweep_dir}/.submitit/*_log.*, fix, and run the same command again to resume them")
        return [{"name": p.name, "status": status(sweep_dir, p)} for p in points]
    # capacity: `parallel` searches per GPU (or in all, on CPU); a point takes one unit on each of its K GPUs
    free = {g: max(parallel, 1) for g in gpus} if gpus else {None: max(parallel, 1)}
    running: dict[int, tuple[subprocess.Popen, Point, Any, list[Any]]] = {}
    queue = list(todo)
    failed: list[str] = []
    while queue or running:
        while queue:
            if gpus:
                devs = sorted((g for g in free if free[g] > 0), key=lambda g: -free[g])[:k]
                if len(devs) < k:
                    break
            elif free[None] > 0:
                devs = [None]
            else:
                break
            for g in devs:
                free[g] -= 1
            p = queue.pop(0)
            cmd = point_command(sweep_dir, p, status(sweep_dir, p) == "partial", k)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in devs)
                cmd.append("device=cuda")
            p.run_dir(sweep_dir).mkdir(parents=True, exist_ok=True)
            logf = open(p.run_dir(sweep_dir) / "sweep.log", "a")
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
            running[proc.pid] = (proc, p, logf, devs)
            log(f"started {p.name}" + (f" on GPU {','.join(str(g) for g in devs)}" if gpus else "")
                + (f" ({k} processes)" if k > 1 else ""))
        time.sleep(0.2)
        for pid in list(running):
            proc, p, logf, devs = running[pid]
            if proc.poll() is not None:
                logf.close()
                del running[pid]
                for g in devs:
                    free[g] += 1
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

