"""Step-time and memory benchmark of the supernets, reference vs optimised, in one process.

Times are medians of repeated steps after warm-up. Peak memory: on CUDA ``max_memory_allocated``;
on CPU (where PyTorch keeps no allocator statistics) the bytes of distinct tensor storages saved for
backward, plus parameters, gradients and optimiser state — the part of a step's memory that an
implementation controls.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

from sldarts.config import SearchConfig, load_config
from sldarts.methods import build_supernet
from sldarts.spaces import SPACES, get_space
from sldarts.strategies import STRATEGIES, make_optimizers, make_strategy

MODES = {name: dict(optim=cls.optim, order=cls.order) for name, cls in STRATEGIES.items()}


def impls_of(space: str) -> tuple[str, ...]:
    """A space's implementations to compare (reference first); ``generic`` for one with a single one."""
    return get_space(space).impls or ("generic",)


@contextmanager
def saved_tensor_bytes():
    """Count distinct storages autograd saves for backward (the activation memory of a step)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        except (RuntimeError, NotImplementedError):
            pass
        return t

    box = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield box
    box["bytes"] = sum(seen.values())


def _state_bytes(model: torch.nn.Module, opts) -> int:
    n = sum(p.numel() * p.element_size() * 2 for p in model.parameters())  # params + grads
    for opt in opts:
        for st in opt.state.values():
            n += sum(v.numel() * v.element_size() for v in st.values() if torch.is_tensor(v))
    return n


def _prepare(space: str, impl: str, mode: str, batch_size: int, device: torch.device, image: int,
             channels: int, cells: int) -> tuple[Callable[[], None], float, str]:
    """Build one supernet + strategy, warm it up, and measure one step's peak memory: (step, bytes, layout)."""
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0  # other rows' models
    if impl.startswith("method:"):  # a method preset, on the implementation it resolves to
        cfg = load_config(None, dict(method=impl[7:], space=space, batch_size=batch_size, channels=channels,
                                     cells=cells))
    else:
        cfg = SearchConfig(space=space, impl="fused" if impl == "generic" else impl, batch_size=batch_size,
                           channels=channels, cells=cells, **MODES[mode])
    torch.manual_seed(0)
    model, method = build_supernet(cfg, 10, 3)
    model.to(device)
    x = torch.randn(batch_size, 3, image, image, device=device)
    fused = impl == "fused" or (impl.startswith("method:") and cfg.impl == "fused")
    layout = torch.channels_last if fused else torch.contiguous_format  # as we run / as the DARTS code
    model.to(memory_format=layout)
    x = x.contiguous(memory_format=layout)
    w_opt, a_opt = make_optimizers(model, cfg)
    strat = make_strategy(cfg, model, model, w_opt, a_opt, method=method)
    y = torch.randint(0, 10, (batch_size,), device=device)
    xa, ya = torch.randn_like(x), y.flip(0)

    def step() -> None:
        strat.step(x, y, lambda: (xa, ya))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up (allocations, algorithm choice)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with saved_tensor_bytes() as box:
        step()
    name = "NHWC" if fused else "NCHW"
    if device.type == "cuda":
        return step, torch.cuda.max_memory_allocated(device) - base, name
    return step, box["bytes"] + _state_bytes(model, (w_opt, a_opt)), name


def bench_rows(space: str | list[tuple[str, str]], mode: str, impls: tuple[str, ...], batch_size: int,
               device: torch.device, repeats: int, image: int = 32, channels: int = 16,
               cells: int = 0) -> list[dict[str, Any]]:
    """Time the implementations' steps interleaved (A B A B ...), so that drift in the machine's speed
    falls on all of them alike; median per implementation. ``space`` may be a list of (space, impl) pairs
    to interleave several spaces (a user model beside the built-in reference)."""
    pairs = space if isinstance(space, list) else [(space, impl) for impl in impls]
    setups = {pair: _prepare(*pair, mode=mode, batch_size=batch_size, device=device, image=image,
                             channels=channels, cells=cells) for pair in pairs}
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in pairs}
    for _ in range(repeats):
        for pair, (step, _, _) in setups.items():
            t0 = time.perf_counter()
            step()
            times[pair].append(time.perf_counter() - t0)
    names = {"reference": "reference", "fused": "optimized", "generic": "generic"}
    return [{"space": sp, "mode": mode, "impl": names.get(impl, impl.removeprefix("method:")),
             "layout": setups[(sp, impl)][2], "median_s": statistics.median(times[(sp, impl)]),
             "peak_mem_mb": setups[(sp, impl)][1] / 2**20} for sp, impl in pairs]


def own_peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` belongs to the current program image;
    ``ru_maxrss`` survives ``exec`` and would report the parent's peak in a child spawned by a big parent."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024.0
    except (OSError, StopIteration):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mb(space: str, mode: str, impl: str, batch_size: int, image: int, channels: int,
                cells: int = 0) -> float:
    """Peak resident memory of a fresh process that builds the supernet and runs three steps (CPU): the
    whole-process number the baseline's "3.9 GB" is. Includes the Python/PyTorch runtime (~0.3 GB)."""
    import subprocess
    import sys

    code = (f"import torch, sldarts.bench as b; torch.set_num_threads({torch.get_num_threads()}); "
            f"b.bench_rows({space!r}, {mode!r}, ({impl!r},), {batch_size}, torch.device('cpu'), 1, {image}, "
            f"{channels}, {cells}); "
            "print(b.own_peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _groups(spaces) -> list[list[tuple[str, str]]]:
    """(space, impl) pairs timed together: each space with a reference alone, spaces without one (user
    models) interleaved with the first that has one, so their ratio is against a reference timed alike."""
    groups: list[list[tuple[str, str]]] = []
    loose: list[tuple[str, str]] = []
    for space in spaces:
        impls = impls_of(space)
        if "reference" in impls:
            groups.append([(space, i) for i in impls])
        else:
            loose.extend((space, i) for i in impls)
    if loose and groups:
        groups[0].extend(loose)
    elif loose:
        groups.append(loose)
    return groups


def run_bench(spaces=tuple(SPACES), modes=tuple(MODES), batch_size: int = 64,
              device: str = "cpu", repeats: int = 3, image: int = 32, channels: int = 16,
              cells: int = 0, progress=print, rss: bool = False, methods: tuple[str, ...] = ()) -> dict[str, Any]:
    """Rows per space x mode x implementation; with ``methods``, also per space one group of method presets
    (mode ``methods``) timed interleaved, each as its preset runs it."""
    dev = torch.device(device)
    rows = []
    jobs = [(group, mode) for group in _groups(spaces) for mode in modes]
    jobs += [([(sp, f"method:{m}") for m in methods], "methods") for sp in spaces if methods]
    for group, mode in jobs:
        for (space, impl), row in zip(group, bench_rows(group, mode, (), batch_size, dev, repeats, image,
                                                        channels, cells), strict=True):
            if rss and dev.type == "cpu":
                row["peak_rss_mb"] = peak_rss_mb(space, mode, impl, batch_size, image, channels, cells)
            rows.append(row)
            progress(f"{space:6s} {mode:9s} {row['impl']:10s} {row['median_s']:8.3f} s "
                     f"{row['peak_mem_mb']:9.1f} MB" + (f" rss {row['peak_rss_mb']:.0f} MB" if rss else ""))
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "device": str(dev),
               "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
               "batch_size": batch_size, "image": image, "channels": channels, "cells": cells}
    return {"machine": machine, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """Markdown table with each row's ratio against the reference of the same space and mode (a space with
    no reference of its own, e.g. a user model, against the first reference row of that mode)."""
    ref = {(r["space"], r["mode"]): r for r in result["rows"] if r["impl"] == "reference"}
    for r in result["rows"]:
        if r["impl"] == "reference":
            ref.setdefault(("*", r["mode"]), r)
        if r["mode"] == "methods":  # method presets: against the first one named (e.g. darts)
            ref.setdefault((r["space"], "methods"), r)
    rss = any("peak_rss_mb" in r for r in result["rows"])
    lines = ["| space | mode | impl | median s/step | peak MB | time vs reference | memory vs reference |"
             + (" process peak RSS MB |" if rss else ""),
             "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if rss else "")]
    for r in result["rows"]:
        base = ref.get((r["space"], r["mode"])) or ref.get(("*", r["mode"]))
        tr = f"{r['median_s'] / base['median_s']:.2f}x" if base else "-"
        mr = f"{r['peak_mem_mb'] / base['peak_mem_mb']:.2f}x" if base else "-"
        lines.append(f"| {r['space']} | {r['mode']} | {r['impl']} | {r['median_s']:.3f} | "
                     f"{r['peak_mem_mb']:.0f} | {tr} | {mr} |" + (f" {r.get('peak_rss_mb', 0):.0f} |" if rss else ""))
    return "\n".join(lines)


def dump(result: dict[str, Any], path: str) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
