"""α activations: how architecture parameters become op weights, in the forward pass *and* in derivation.

Each activation is one small class with ``__call__`` (α -> weights, over the last dim) and ``init_``
(the α start value), registered in :data:`ACTIVATIONS` under its ``name``: the config's choices come
from there.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sldarts.registry import Registry


class Activation:
    """Base class: maps α of shape (edges, ops) to op weights of the same shape."""

    name = "base"

    def __call__(self, alpha: Tensor) -> Tensor:
        raise NotImplementedError

    def init_(self, alpha: Tensor, value: float | None = None) -> None:
        raise NotImplementedError


class Softmax(Activation):
    """DARTS: ops on an edge compete; α ~ N(0, 1e-3²)."""

    name = "softmax"

    def __call__(self, alpha: Tensor) -> Tensor:
        return torch.softmax(alpha, dim=-1)

    def init_(self, alpha: Tensor, value: float | None = None) -> None:
        with torch.no_grad():
            if value is None:
                alpha.normal_(0.0, 1e-3)
            else:
                alpha.fill_(value)


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


ACTIVATIONS: Registry[type[Activation]] = Registry("activation", group="sldarts.activations")
ACTIVATIONS.register(Softmax)
ACTIVATIONS.register(Sigmoid)


def get_activation(name: str) -> Activation:
    return ACTIVATIONS.get(name)()
