"""DARTS- (Chu et al., "DARTS-: robustly stepping out of performance collapse without indicators",
ICLR 2021): an auxiliary skip connection on every edge, outside the op weights, its coefficient decaying
linearly from 1 to 0 over the search."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from sldarts.methods import Part, mixing_edges, refuse, register
from sldarts.mixing import Mixing
from sldarts.spaces.base import Supernet


@dataclass
class AuxSkipOptions:
    aux_skip: bool = field(default=False, metadata={
        "help": "DARTS-: auxiliary skip connection on every edge, coefficient 1 -> 0 over the epochs"})


def _skip(m: Mixing) -> nn.Module | None:
    """A fresh skip connection of the edge's shape: the space's own `skip_connect` for the full channels,
    or an identity where the edge has an identity candidate (so that input and output shapes agree)."""
    if m.make is not None and m.channels is not None:
        ops = m.make(m.channels)
        if "skip_connect" in ops:
            return ops["skip_connect"]
    if any(isinstance(c, nn.Identity) for c in m.candidate_modules()):
        return nn.Identity()
    return None


@register
class AuxSkip(Part):
    name = "aux_skip"
    title = "auxiliary skip (DARTS-)"
    Options = AuxSkipOptions
    on = "aux_skip"
    fused_ok = False
    order = 12

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.edges: list[Mixing] = []

    def adapt(self, model: Supernet) -> None:
        self.edges = mixing_edges(model)
        if not self.edges:
            raise refuse(self.title, f"the {type(model).__name__} supernet has no mixed ops; drop aux_skip")
        skips = [_skip(m) for m in self.edges]
        if any(s is None for s in skips):
            raise refuse(self.title, "an edge has neither a skip_connect the space can build nor an nn.Identity "
                         "candidate, so no skip of its output's shape is known; drop aux_skip")
        for m, s in zip(self.edges, skips, strict=True):
            m.aux = s
            m.aux_coef = 1.0

    def on_epoch(self, epoch: int, epochs: int) -> None:
        for m in self.edges:
            m.aux_coef = 1.0 - epoch / epochs
