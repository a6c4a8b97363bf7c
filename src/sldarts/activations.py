"""α activations: how architecture parameters become op weights, in the forward pass *and* in derivation.

Each activation is one small class with ``__call__`` (α -> weights, over the last dim) and ``init_``
(the α start value). Register a new one in :data:`ACTIVATIONS`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sldarts.errors import SldartsError


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
            alpha.fill_(-math.log(n - 1) if value is None else value)


ACTIVATIONS: dict[str, type[Activation]] = {"softmax": Softmax, "sigmoid": Sigmoid}


def get_activation(name: str) -> Activation:
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise SldartsError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None
