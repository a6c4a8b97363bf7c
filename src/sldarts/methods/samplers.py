"""The samplers: how α becomes op weights (exactly one per method). Each wraps an
:class:`~sldarts.activations.Activation` (softmax, sigmoid, GDAS's Gumbel, DrNAS's Dirichlet, or one
registered in ``sldarts.activations``) and carries its options."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sldarts.activations import ACTIVATIONS, Activation
from sldarts.methods import Part, register
from sldarts.spaces.base import Supernet


class Sampler(Part):
    """α -> op weights through ``activation``; re-initialises α for it (from the space's own RNG point)."""

    sampler = True
    order = 0

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.activation: Activation = self.make_activation()

    def make_activation(self) -> Activation:
        """The registered activation of this name, its options as keywords."""
        return ACTIVATIONS.get(self.name)(**dataclasses.asdict(self.opts))

    @property
    def fused_ok(self) -> bool:  # type: ignore[override]
        return not self.activation.sparse

    @property
    def sparse(self) -> bool:  # type: ignore[override]
        return self.activation.sparse

    def adapt(self, model: Supernet) -> None:
        model.activation = self.activation
        state = getattr(model, "_alpha_rng", None)
        if state is not None:  # draw α where the space drew it: the same stream as a space built with it
            torch.set_rng_state(state)
        model.init_alphas(self.alpha_init)
        model.set_sparse(self.activation.sparse)

    alpha_init: float | None = None

    @classmethod
    def from_config(cls, cfg: Any, extra: dict[str, Any] | None = None) -> Part:
        part = super().from_config(cfg, extra)
        part.alpha_init = getattr(cfg, "alpha_init", None)  # type: ignore[attr-defined]
        return part

    def loss(self, model: Supernet) -> Tensor | None:
        return self.activation.regularizer(list(model.arch.values()))

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.activation.set_progress(epoch, epochs)


@register
class SoftmaxSampler(Sampler):
    name = "softmax"
    title = "softmax (DARTS)"


@register
class SigmoidSampler(Sampler):
    name = "sigmoid"
    title = "sigmoid (the paper)"


@dataclass
class GumbelOptions:
    tau_max: float = field(default=10.0, metadata={"range": (0, None, True),
                                                   "help": "GDAS: Gumbel temperature at the first epoch"})
    tau_min: float = field(default=0.1, metadata={"range": (0, None, True),
                                                  "help": "GDAS: temperature at the last epoch (linear decay)"})


@register
class GumbelSampler(Sampler):
    """GDAS: hard Gumbel-softmax samples, τ linear from ``tau_max`` to ``tau_min``; one op per edge."""

    name = "gumbel"
    title = "Gumbel sampling (GDAS)"
    Options = GumbelOptions


@dataclass
class DirichletOptions:
    kl_weight: float = field(default=1e-3, metadata={"range": (0, None, False),
                                                     "help": "DrNAS: weight of the KL to the Dirichlet prior"})


@register
class DirichletSampler(Sampler):
    """DrNAS: Dirichlet samples of concentration elu(α)+1 and the KL to the uniform prior as α's loss."""

    name = "dirichlet"
    title = "Dirichlet sampling (DrNAS)"
    Options = DirichletOptions


def sampler_for(name: str) -> type[Part]:
    """The sampler part of an activation name; a registered activation without its own part gets a plain one."""
    from sldarts.methods import PARTS

    if name in PARTS and PARTS.get(name).sampler:
        return PARTS.get(name)
    ACTIVATIONS.get(name)  # one-line error for an unknown name
    return type(f"{name}Sampler", (Sampler,), {"name": name})
