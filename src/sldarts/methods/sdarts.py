"""SDARTS-RS (Chen & Hsieh, "Stabilizing differentiable architecture search via perturbation-based
regularization", ICML 2020): random smoothing. The weight step sees the activated weights plus uniform
noise in [−ε, ε], clipped to [0, 1] per op and (for softmax) renormalised to sum 1 per edge, with ε growing
linearly from 0.03 to ``sdarts_epsilon`` over the epochs (the official code: 0.03 + (ε − 0.03)·epoch/epochs).
α itself is never changed by the perturbation, and the α step uses the clean weights.

Under ``optim=single`` the step computes α's gradient on the clean weights and w's on the perturbed ones,
from the same batch (two forward passes)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from sldarts.activations import Activation
from sldarts.methods import Part, refuse, register
from sldarts.spaces.base import Supernet


@dataclass
class SmoothingOptions:
    sdarts_epsilon: float = field(default=0.0, metadata={
        "range": (0, 1, False),
        "help": "SDARTS-RS: final bound of the uniform noise on the weight step's op weights (0.03 -> it)"})


@register
class RandomSmoothing(Part):
    name = "smoothing"
    title = "random smoothing (SDARTS-RS)"
    Options = SmoothingOptions
    on = "sdarts_epsilon"
    order = 32

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.eps = 0.03
        self.normalised = True

    def adapt(self, model: Supernet) -> None:
        act = model.activation
        if type(act).forward_weights is not Activation.forward_weights:
            raise refuse(self.title, f"activation={act.name} samples its weights; random smoothing perturbs "
                         "deterministic ones (softmax or sigmoid)")
        self.normalised = act.name != "sigmoid"

    def on_epoch(self, epoch: int, epochs: int) -> None:
        top = self.opts.sdarts_epsilon
        self.eps = 0.03 + (top - 0.03) * epoch / epochs

    def perturb(self, w: Tensor) -> Tensor:
        """Activated weights ``w`` (ops on the last dim) plus U(−ε, ε), clipped to [0, 1]; softmax rows
        renormalised (a row clipped to all zeros keeps its largest entry at 1), as SDARTS's ``clip``."""
        p = w + torch.empty_like(w).uniform_(-self.eps, self.eps)
        top = p.argmax(-1, keepdim=True)
        p = p.clamp(0.0, 1.0)
        if not self.normalised:
            return p
        dead = p.sum(-1, keepdim=True) == 0
        p = torch.where(dead, torch.zeros_like(p).scatter(-1, top, 1.0), p)
        return p / p.sum(-1, keepdim=True)

    def weight_step_weights(self, model: Supernet) -> dict[str, Tensor] | None:
        with torch.no_grad():
            return {k: self.perturb(model.activation(a)) for k, a in model.arch.items()}
