"""Parameters and multiply-adds of evaluation networks, by the conventions the papers use.

Parameters: every parameter except the auxiliary head (DARTS convention). Multiply-adds: convolutions
and linear layers for one image in eval mode, ``FlopCounterMode`` total / 2. BN, pooling and additions
are not counted. (The DARTS paper's 574M for its ImageNet cell cannot be reproduced by any counting
convention; this counter gives 530M for DARTS_V2, the number other re-implementations report.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sldarts.errors import SldartsError

DATASETS = {  # name: (classes, input side)
    "cifar10": (10, 32), "cifar100": (100, 32), "imagenet": (1000, 224), "imagenet16-120": (120, 16),
}


def count_params(model: nn.Module) -> int:
    aux = getattr(model, "aux_head", None)
    skip = {id(p) for p in aux.parameters()} if aux is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def count_macs(model: nn.Module, side: int, in_channels: int = 3) -> int:
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_channels, side, side, device=next(model.parameters()).device))
    finally:
        model.train(was)
    return int(counter.get_total_flops() // 2)


def summary(model: nn.Module, side: int) -> dict[str, Any]:
    params, macs = count_params(model), count_macs(model, side)
    return {"params": params, "params_m": round(params / 1e6, 6), "macs": macs, "macs_m": round(macs / 1e6, 6)}


def build_eval_network(space: str, arch: Any, dataset: str, channels: int | None = None,
                       layers: int | None = None, auxiliary: bool = True) -> tuple[nn.Module, int]:
    """The evaluation network of a DARTS genotype or an NB201 arch string for a data set: (model, side)."""
    if dataset not in DATASETS:
        raise SldartsError(f"unknown dataset {dataset!r} for complexity; choose one of {', '.join(DATASETS)}")
    classes, side = DATASETS[dataset]
    if space == "nb201":
        from sldarts.spaces.nb201 import NB201Network

        if dataset == "imagenet":
            raise SldartsError("NAS-Bench-201 networks are defined for cifar10, cifar100 and imagenet16-120")
        return NB201Network(arch, channels or 16, layers or 5, classes), side
    if space == "darts":
        from sldarts.spaces.darts import DartsNetwork

        imagenet = dataset == "imagenet"
        return DartsNetwork(arch, channels or (48 if imagenet else 36), layers or (14 if imagenet else 20),
                            classes, auxiliary=auxiliary, imagenet=imagenet), side
    raise SldartsError(f"unknown space {space!r}; use nb201 or darts")


def complexity(space: str, arch: Any, dataset: str, channels: int | None = None,
               layers: int | None = None) -> dict[str, Any]:
    model, side = build_eval_network(space, arch, dataset, channels, layers)
    return summary(model, side)
