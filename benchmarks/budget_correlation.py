"""Predicted vs measured cost of NB201 cells (docs/budget.md): the cost table's sum against the whole
evaluation network counted (MACs, params) or timed (latency, median of repeated runs), Spearman's rank
correlation per cost kind.

    python benchmarks/budget_correlation.py --cells 12 --repeats 30 --rounds 5 --threads 1 --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time

import torch

from sldarts.budget import CostModel, CostOptions, device_description, nb201_layout, time_module
from sldarts.spaces import get_space
from sldarts.spaces.nb201 import EDGES, OPS, format_arch


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return cov / (va * vb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5, help="latency: timed rounds over all cells (median)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dataset", default="cifar10")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cells = [[rng.randrange(len(OPS)) for _ in EDGES] for _ in range(args.cells)]
    space = get_space("nb201")
    out = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "machine": platform.node(),
           "device": device_description(args.device, args.threads, 1), "cells": [format_arch([OPS[i] for i in c])
                                                                                  for c in cells], "kinds": {}}
    with tempfile.TemporaryDirectory() as cache:
        for kind in ("macs", "params", "latency"):
            opts = CostOptions(cost=kind, cost_device=args.device, cost_threads=args.threads,
                               cost_repeats=args.repeats, cost_cache=cache)
            model = CostModel(kind, nb201_layout(space, args.dataset), opts)
            pred = [model.predict({"cell": c}) for c in cells]
            if kind == "latency":  # rounds over the cells, the median of rounds: drift on a shared machine
                nets = [model.layout.network(a) for a in out["cells"]]  # is spread over every cell alike
                x = (torch.zeros(1, *model.layout.sample),)
                rounds = [[time_module(n, x, torch.device(args.device), args.repeats, args.threads) for n in nets]
                          for _ in range(args.rounds)]
                meas = [statistics.median(r[i] for r in rounds) for i in range(len(nets))]
            else:
                meas = [model.whole(a) for a in out["cells"]]
            rel = max(abs(p - m) / m for p, m in zip(pred, meas, strict=True))
            out["kinds"][kind] = {"spearman": round(spearman(pred, meas), 4), "max_rel_error": round(rel, 4),
                                  "predicted": pred, "measured": meas}
            print(f"{kind:8s} Spearman {spearman(pred, meas):.3f}  max relative error {rel:.1%}")
    print(json.dumps(out))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
