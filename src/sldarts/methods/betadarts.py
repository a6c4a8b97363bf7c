"""β-DARTS (Ye et al., "β-DARTS: beta-decay regularization for differentiable architecture search",
CVPR 2022): the beta-decay regulariser, the mean over edges of logsumexp(α) (the log of softmax's
normaliser, whose gradient is the activated weights themselves), added to α's loss with a weight λ that
grows linearly with the epoch: λ = ``beta_weight`` · epoch / epochs (the official code: 50 · epoch / 100 on
its 100-epoch NAS-Bench-201 search)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sldarts.methods import Part, register
from sldarts.spaces.base import Supernet


@dataclass
class BetaOptions:
    beta_weight: float = field(default=0.0, metadata={
        "range": (0, None, False),
        "help": "β-DARTS: final weight of the beta-decay loss mean(logsumexp α); grows linearly from 0"})


@register
class BetaDecay(Part):
    name = "beta_decay"
    title = "beta-decay regularisation (β-DARTS)"
    Options = BetaOptions
    on = "beta_weight"
    order = 31

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.lam = 0.0

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.lam = self.opts.beta_weight * epoch / epochs

    def loss(self, model: Supernet) -> Tensor | None:
        if self.lam == 0:
            return None
        terms = torch.cat([torch.logsumexp(a, dim=-1).reshape(-1) for a in model.arch.values()])
        return self.lam * terms.mean()
