"""FairDARTS (Chu et al., "Fair DARTS: eliminating unfair advantages in differentiable architecture
search", ECCV 2020): the zero-one loss, which pushes each activated weight towards 0 or 1."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sldarts.methods import Part, register
from sldarts.spaces.base import Supernet


@dataclass
class ZeroOneOptions:
    zero_one_weight: float = field(default=0.0, metadata={
        "range": (0, None, False), "help": "FairDARTS: weight of the zero-one loss on the activated weights"})


@register
class ZeroOne(Part):
    """−w·mean((a − 0.5)²) over every activated weight a = activation(α) (σ(α) under sigmoid, as FairDARTS;
    under another sampler its own deterministic weights, e.g. the Dirichlet mean)."""

    name = "zero_one"
    title = "zero-one loss (FairDARTS)"
    Options = ZeroOneOptions
    on = "zero_one_weight"
    order = 30

    def loss(self, model: Supernet) -> Tensor | None:
        a = torch.cat([model.activation(p).reshape(-1) for p in model.arch.values()])
        return -self.opts.zero_one_weight * ((a - 0.5) ** 2).mean()
