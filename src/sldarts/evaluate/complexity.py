"""Parameters and multiply-adds of evaluation networks, by the conventions the papers use.

Parameters: every parameter except the auxiliary head (DARTS convention). Multiply-adds: convolutions
and linear layers for one input in eval mode, ``FlopCounterMode`` total / 2. BN, pooling and additions
are not counted. (The DARTS paper's 574M for its ImageNet cell cannot be reproduced by any counting
convention; this counter gives 530M for DARTS_V2, the number other re-implementations report.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sldarts.data import DATASETS
from sldarts.errors import SldartsError
from sldarts.spaces import SearchSpace, get_space


def count_params(model: nn.Module) -> int:
    aux = getattr(model, "aux_head", None)
    skip = {id(p) for p in aux.parameters()} if aux is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def count_macs(model: nn.Module, sample_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one sample of shape (C, H, W) (or any shape the model takes, batch excluded)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *sample_shape, device=next(model.parameters()).device))
    finally:
        model.train(was)
    return int(counter.get_total_flops() // 2)


def summary(model: nn.Module, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    params = count_params(model)
    out: dict[str, Any] = {"params": params, "params_m": round(params / 1e6, 6)}
    try:
        macs = count_macs(model, sample_shape)
        out.update(macs=macs, macs_m=round(macs / 1e6, 6))
    except (RuntimeError, ValueError):
        pass  # an input shape the network cannot take (e.g. tiny test images): parameters only
    return out


def complexity(space: SearchSpace | str, arch: Any, dataset: str, channels: int | None = None,
               layers: int | None = None) -> dict[str, Any]:
    """Params and MACs of ``arch``'s evaluation network on a data set of known shape (cifar10, cifar100,
    imagenet16-120, imagenet, digits)."""
    space = get_space(space) if isinstance(space, str) else space
    spec = DATASETS.get(dataset)
    if spec is None or spec.num_classes is None:
        known = [k for k, v in DATASETS.items() if v.num_classes is not None]
        raise SldartsError(f"unknown dataset {dataset!r} for complexity; choose one of {', '.join(known)}")
    model = space.eval_network(space.parse(arch), spec.num_classes, spec.in_channels, dataset=dataset,
                               channels=channels, cells=layers)
    return summary(model, (spec.in_channels, spec.side, spec.side))


def _searched_dataset(run_dir: str | Path | None) -> str | None:
    """The data set a run directory searched on, when it is one whose shape is known."""
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if saved is None or not saved.exists():
        return None
    ds = (yaml.safe_load(saved.read_text()) or {}).get("dataset")
    return ds if ds in DATASETS and DATASETS[ds].num_classes else None


def complexity_of(run_dir: str | Path | None = None, genotype: str | None = None, arch: str | None = None,
                  space: str | None = None, dataset: str | None = None, channels: int | None = None,
                  layers: int | None = None) -> dict[str, Any]:
    """``sldarts complexity``: a run's derived architecture (or a genotype / arch string) counted on
    ``dataset``, by default the space's published setting for the searched data set; a user model on user
    data is counted at the searched shape, as recorded at the end of its search."""
    from sldarts.cells import resolve_cell

    obj, cell = resolve_cell(run_dir, genotype, arch, space)
    searched = _searched_dataset(run_dir)
    dataset = dataset or obj.complexity_dataset(searched or "cifar10") or searched
    if dataset is None and run_dir:
        result = Path(run_dir) / "result.json"
        recorded = json.loads(result.read_text()).get("complexity") if result.exists() else None
        if recorded is None:
            raise SldartsError(f"{run_dir} has no recorded complexity; pass --dataset NAME")
        return recorded
    return complexity(obj, cell, dataset or "cifar10", channels, layers)
