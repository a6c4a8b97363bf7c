"""What every search space's supernet offers: weights vs α, activated weights, derivation.

Strategies and the run loop only use this interface, never a space's internals.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from sldarts.activations import Activation
from sldarts.spaces.ops import PARAM_FREE, Zero


class MixedOp(nn.Module):
    """One edge of the supernet: the weighted sum of every candidate op.

    ``none`` contributes exactly zero, so no tensor is built for it; its weight still matters
    for softmax through the normalisation, which the activation already applied.
    """

    def __init__(self, ops: dict[str, nn.Module]) -> None:
        super().__init__()
        self.names = list(ops)
        self.ops = nn.ModuleList(ops.values())
        self._live = [k for k, op in enumerate(self.ops) if not isinstance(op, Zero)]

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        out = None
        for k in self._live:
            y = weights[k] * self.ops[k](x)
            out = y if out is None else out + y
        if out is None:  # only `none` on this edge
            return self.ops[0](x)
        return out


class Supernet(nn.Module):
    """Base class. Subclasses put α in ``self.arch`` (an ``nn.ParameterDict``) and define ``derive``."""

    arch: nn.ParameterDict
    activation: Activation
    op_names: tuple[str, ...]

    def alphas(self) -> list[nn.Parameter]:
        """The architecture parameters (kept as module parameters so DDP averages them too)."""
        return list(self.arch.values())

    def weights(self) -> list[nn.Parameter]:
        """Every parameter that is not α: the only ones the weight optimiser ever sees."""
        ids = {id(a) for a in self.alphas()}
        return [p for p in self.parameters() if id(p) not in ids]

    def named_weights(self) -> Iterator[tuple[str, nn.Parameter]]:
        ids = {id(a) for a in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in ids)

    def arch_weights(self) -> dict[str, Tensor]:
        """Activated α, per cell type: what the forward pass multiplies each op by."""
        return {name: self.activation(a) for name, a in self.arch.items()}

    def init_alphas(self, value: float | None = None) -> None:
        for a in self.alphas():
            self.activation.init_(a, value)

    def alpha_state(self) -> dict[str, Any]:
        """Raw and activated α as plain lists, for metrics.jsonl."""
        with torch.no_grad():
            return {
                "alphas": {k: v.detach().cpu().tolist() for k, v in self.arch.items()},
                "weights": {k: v.detach().cpu().tolist() for k, v in self.arch_weights().items()},
            }

    def derive(self) -> Any:
        raise NotImplementedError

    def param_free_ratio(self, arch: Any) -> float:
        raise NotImplementedError


def param_free_share(ops: list[str]) -> float:
    return sum(op in PARAM_FREE for op in ops) / max(len(ops), 1)
