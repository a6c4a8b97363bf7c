"""α activations: how architecture parameters become op weights, in the forward pass *and* in derivation.

Each activation is one small class registered in :data:`ACTIVATIONS` under its ``name`` (the config's
choices come from there):

- ``__call__(α)``: the deterministic weights over the last dim; derivation, margins and metrics use them;
- ``forward_weights(α, training)``: what the network multiplies its ops by (a sample while training,
  for the sampling methods; ``__call__`` otherwise);
- ``init_``: α's start value; ``regularizer``: a loss term on α (DrNAS's KL); ``set_progress``: schedules
  (GDAS's temperature); ``sparse``: the forward weights are one-hot, so only the chosen op is computed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sldarts.registry import Registry


class Activation:
    """Base class: maps α of shape (edges, ops) to op weights of the same shape."""

    name = "base"
    sparse = False  # forward weights are one-hot: compute only the chosen op of each edge

    @classmethod
    def from_config(cls, cfg) -> Activation:
        """The activation with the options its config keys give (temperatures, loss weights)."""
        return cls()

    def __call__(self, alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_weights(self, alpha: Tensor, training: bool) -> Tensor:
        return self(alpha)

    def init_(self, alpha: Tensor, value: float | None = None) -> None:
        raise NotImplementedError

    def regularizer(self, alphas: list[Tensor]) -> Tensor | None:
        """A term added to the loss that updates α (None: none)."""
        return None

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (0-based) of ``epochs``; schedules are functions of it alone, so a
        resumed run continues them exactly."""


def _normal_init(alpha: Tensor, value: float | None) -> None:
    """DARTS's α start: N(0, 1e-3²), or a constant."""
    with torch.no_grad():
        if value is None:
            alpha.normal_(0.0, 1e-3)
        else:
            alpha.fill_(value)


class Softmax(Activation):
    """DARTS: ops on an edge compete; α ~ N(0, 1e-3²)."""

    name = "softmax"

    def __call__(self, alpha: Tensor) -> Tensor:
        return torch.softmax(alpha, dim=-1)

    def init_(self, alpha: Tensor, value: float | None = None) -> None:
        _normal_init(alpha, value)


class Sigmoid(Activation):
    """The paper: ops do not compete; α = −ln(n−1) so that every op starts at weight exactly 1/n."""

    name = "sigmoid"

    def __call__(self, alpha: Tensor) -> Tensor:
        return torch.sigmoid(alpha)

    def init_(self, alpha: Tensor, value: float | None = None) -> None:
        n = alpha.shape[-1]
        with torch.no_grad():
            # one candidate (n=1) has no competitor: start at 0.5
            alpha.fill_((-math.log(n - 1) if n > 1 else 0.0) if value is None else value)


class Gumbel(Softmax):
    """GDAS (Dong & Yang, "Searching for a robust neural architecture in four GPU hours", CVPR 2019).

    Training: a hard Gumbel-softmax sample per edge, one-hot in the forward pass with the soft sample's
    gradient (straight-through), at temperature τ decaying linearly from ``tau_max`` to ``tau_min`` over
    the epochs; only the sampled op is computed. Evaluation: one-hot argmax α. Derivation: argmax α.
    """

    name = "gumbel"
    sparse = True

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1) -> None:
        self.tau_max, self.tau_min = tau_max, tau_min
        self.tau = tau_max

    @classmethod
    def from_config(cls, cfg) -> Gumbel:
        return cls(cfg.tau_max, cfg.tau_min)

    def set_progress(self, epoch: int, epochs: int) -> None:
        self.tau = self.tau_max - (self.tau_max - self.tau_min) * epoch / max(epochs - 1, 1)

    def forward_weights(self, alpha: Tensor, training: bool) -> Tensor:
        if not training:
            return torch.nn.functional.one_hot(alpha.argmax(-1), alpha.shape[-1]).to(alpha.dtype)
        while True:  # as GDAS: draw again in the (rare) case of an infinite Gumbel sample
            gumbels = -torch.empty_like(alpha).exponential_().log()
            soft = torch.softmax((alpha.log_softmax(-1) + gumbels) / self.tau, dim=-1)
            if torch.isfinite(soft).all():
                break
        hard = torch.nn.functional.one_hot(soft.argmax(-1), alpha.shape[-1]).to(soft.dtype)
        return hard - soft.detach() + soft


class Dirichlet(Activation):
    """DrNAS (Chen et al., "DrNAS: Dirichlet neural architecture search", ICLR 2021).

    Op weights are a Dirichlet sample with concentration ``elu(α) + 1`` (``rsample``: pathwise gradient)
    while training and its mean at evaluation and derivation; α's loss gets ``kl_weight`` times the KL
    divergence to the Dirichlet(1, ..., 1) prior (the paper's anchor), summed over edges.
    """

    name = "dirichlet"

    def __init__(self, kl_weight: float = 1e-3) -> None:
        self.kl_weight = kl_weight

    @classmethod
    def from_config(cls, cfg) -> Dirichlet:
        return cls(cfg.kl_weight)

    @staticmethod
    def concentration(alpha: Tensor) -> Tensor:
        return torch.nn.functional.elu(alpha) + 1.0

    def __call__(self, alpha: Tensor) -> Tensor:
        c = self.concentration(alpha)
        return c / c.sum(-1, keepdim=True)

    def forward_weights(self, alpha: Tensor, training: bool) -> Tensor:
        if not training:
            return self(alpha)
        return torch.distributions.Dirichlet(self.concentration(alpha)).rsample()

    def init_(self, alpha: Tensor, value: float | None = None) -> None:
        _normal_init(alpha, value)

    def regularizer(self, alphas: list[Tensor]) -> Tensor | None:
        if self.kl_weight <= 0:
            return None
        kl = sum(torch.distributions.kl_divergence(
            torch.distributions.Dirichlet(self.concentration(a)),
            torch.distributions.Dirichlet(torch.ones_like(a))).sum() for a in alphas)
        return self.kl_weight * kl


ACTIVATIONS: Registry[type[Activation]] = Registry("activation", group="sldarts.activations")
for _cls in (Softmax, Sigmoid, Gumbel, Dirichlet):
    ACTIVATIONS.register(_cls)


def get_activation(name: str, cfg=None) -> Activation:
    """The registered activation ``name``, with its options from ``cfg`` when given."""
    cls = ACTIVATIONS.get(name)
    return cls.from_config(cfg) if cfg is not None else cls()
