"""PC-DARTS (Xu et al., "PC-DARTS: partial channel connections for memory-efficient architecture search",
ICLR 2020): partial channels on every mixed edge, and edge normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sldarts.errors import SldartsError
from sldarts.methods import Part, mixing_edges, refuse, register
from sldarts.spaces.base import Supernet


@dataclass
class PartialOptions:
    partial_channels: int = field(default=1, metadata={"range": (1, None, False),
                                                       "help": "PC-DARTS: mixed ops see 1/K of the channels"})


@register
class PartialChannels(Part):
    """The candidates of every edge are rebuilt for C/K channels (the edge's ``make``); they see the first C/K
    channels, the rest bypass the edge (max-pooled when it reduces), and a channel shuffle mixes the two."""

    name = "partial"
    title = "partial channels (PC-DARTS)"
    Options = PartialOptions
    on = "partial_channels"
    fused_ok = False
    order = 10

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return getattr(cfg, "partial_channels", 1) > 1

    def adapt(self, model: Supernet) -> None:
        k = self.opts.partial_channels
        edges = mixing_edges(model)
        if not edges:
            raise refuse(self.title, f"the {type(model).__name__} supernet has no mixed ops (MixedOp or Choice) "
                         "to split; drop partial_channels")
        for m in edges:
            if m.make is None or m.channels is None:
                where = " ".join(filter(None, [type(m).__name__, getattr(m, "label", None)]))
                raise refuse(self.title, f"the candidates of {where} are fixed modules whose channel count only "
                             "their author can change (a Choice, or a MixedOp built without make=); drop "
                             "partial_channels")
            if m.channels % k:
                raise SldartsError(f"partial_channels={k} must divide the cell's channels ({m.channels}); "
                                   "change channels")
        for m in edges:
            m.set_candidates(m.make(m.channels // k))
            m.partial = k
            m.bypass = nn.MaxPool2d(2, 2) if m.stride == 2 else None


@dataclass
class EdgeNormOptions:
    edge_norm: bool = field(default=False, metadata={
        "help": "PC-DARTS: per-edge β, softmax over a node's incoming edges, scales each edge and derivation"})


@register
class EdgeNorm(Part):
    """Per-edge β (architecture parameters, N(0, 1e-3²)), softmax over the edges entering the same node; the
    supernet multiplies each edge's output by its factor and derivation by its weight. Needs the supernet's
    ``node_groups()``."""

    name = "edge_norm"
    title = "edge normalisation (PC-DARTS)"
    Options = EdgeNormOptions
    on = "edge_norm"
    fused_ok = False
    order = 11

    def adapt(self, model: Supernet) -> None:
        try:
            groups = model.node_groups()
        except SldartsError:
            raise refuse(self.title, f"the {type(model).__name__} supernet does not say which edges enter which "
                         "node (no node_groups()); drop edge_norm") from None
        rows = groups[-1][1] if groups else 0
        keys = [k for k, a in model.arch.items() if a.dim() == 2 and a.shape[0] == rows]
        if not keys:
            raise refuse(self.title, f"no α of {rows} edges in {type(model).__name__}; drop edge_norm")
        model.edge_betas = nn.ParameterDict({k: nn.Parameter(torch.empty(rows)) for k in keys})
        with torch.no_grad():
            for b in model.edge_betas.values():
                b.normal_(0.0, 1e-3)
