"""Tiny NAS-Bench-201 benchmarks in each real format, built with the benchmarks' own classes."""

import bz2
import csv
import pickle
from pathlib import Path

import torch

CELLS = [
    "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|",
]


def truth(index: int) -> dict:
    """The accuracy each fake benchmark stores: distinct per (cell, data set, split), seed-averaged."""
    base = 10.0 * index
    return {"cifar10": {"valid": base + 1.25, "test": base + 2.5},
            "cifar100": {"valid": base + 3.75, "test": base + 5.0},
            "imagenet16-120": {"valid": base + 6.25, "test": base + 7.5}}


def write_csv(path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "arch", "cifar10_valid", "cifar10_test", "cifar10_valid_ori_test",
                    "cifar100_test", "imagenet16_120_test", "params_cifar10"])
        for i, a in enumerate(CELLS):
            t = truth(i)
            w.writerow([i, a, t["cifar10"]["valid"], t["cifar10"]["test"], 99.0, t["cifar100"]["test"],
                        t["imagenet16-120"]["test"], 0.1])
    return path


def _arch_results(index: int, arch: str, epochs: int, shift: float):
    """ArchResults with two seeds whose accuracies average to truth(index) (+shift for the 12-epoch hp)."""
    from nats_bench.api_utils import ArchResults, ResultsCount

    t = truth(index)
    res = ArchResults(index, arch)
    last = epochs - 1
    layout = {  # benchmark data set -> {eval set name: value}
        "cifar10-valid": {"x-valid": t["cifar10"]["valid"], "ori-test": 1.0},
        "cifar10": {"ori-test": t["cifar10"]["test"]},
        "cifar100": {"x-valid": t["cifar100"]["valid"], "x-test": t["cifar100"]["test"], "ori-test": 2.0},
        "ImageNet16-120": {"x-valid": t["imagenet16-120"]["valid"], "x-test": t["imagenet16-120"]["test"],
                           "ori-test": 3.0},
    }
    for dataset, sets in layout.items():
        for seed, delta in ((777, -0.5), (888, 0.5)):  # the mean over seeds is the true value
            rc = ResultsCount(dataset, None, {last: 50.0}, {last: 1.0}, 0.1, 10.0,
                              {"arch_str": arch, "channel": 16, "num_cells": 5, "class_num": 10}, seed, epochs, 0.0)
            rc.eval_names = list(sets)
            rc.eval_acc1es = {f"{k}@{last}": v + delta + shift for k, v in sets.items()}
            rc.eval_losses = {f"{k}@{last}": 0.5 for k in sets}
            res.update(dataset, seed, rc)
    return res


def _arch2infos():
    return {i: {"12": _arch_results(i, a, 12, shift=-20.0).state_dict(),
                "200": _arch_results(i, a, 200, shift=0.0).state_dict()} for i, a in enumerate(CELLS)}


def write_nats_file(folder: Path) -> Path:
    path = folder / "NATS-tss-v1_0-3ffb9.pickle.pbz2"
    data = {"meta_archs": list(CELLS), "arch2infos": _arch2infos(), "evaluated_indexes": list(range(len(CELLS)))}
    with bz2.BZ2File(path, "wb") as f:
        pickle.dump(data, f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def write_nats_simple(folder: Path) -> Path:
    root = folder / "NATS-tss-v1_0-3ffb9-simple"
    root.mkdir()
    with bz2.BZ2File(root / "meta.pickle.pbz2", "wb") as f:
        pickle.dump({"meta_archs": list(CELLS)}, f)
    for i, infos in _arch2infos().items():
        with bz2.BZ2File(root / f"{i:06d}.pickle.pbz2", "wb") as f:
            pickle.dump(infos, f)
    return root


def write_nb201_pth(folder: Path) -> Path:
    """The legacy file names the 12- and 200-epoch results 'less' and 'full'."""
    path = folder / "NAS-Bench-201-v1_1-096897.pth"
    infos = {i: {"less": v["12"], "full": v["200"]} for i, v in _arch2infos().items()}
    torch.save({"meta_archs": list(CELLS), "arch2infos": infos,
                "evaluated_indexes": list(range(len(CELLS)))}, path)
    return path
