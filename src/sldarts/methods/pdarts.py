"""P-DARTS (Chen et al., "Progressive differentiable architecture search: bridging the depth gap between
search and evaluation", ICCV 2019): the search runs in stages on ever deeper supernets (5 -> 11 -> 17 cells),
the candidates of every edge pruned between stages to the strongest ops by their activated weights (8 -> 5 ->
3), a dropout on the skip connections whose rate decays over each stage's epochs, and at most M skip
connections in the final normal cell (the weakest skip edges give way to their next-best op).

The part :class:`Progressive` works on one stage's supernet: it hides the pruned ops of each edge (their α
weigh zero and they are not computed) and drops out the skip connections. :func:`sldarts.stages.pdarts_search` runs the
stages as ordinary searches in ``OUT/stage1``, ``OUT/stage2``, ...: a stage that finished is read back from its
directory, a killed one resumes from its checkpoint, so the whole search resumes exactly after ``kill -9``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sldarts.errors import SldartsError
from sldarts.methods import Part, config_options, mixing_edges, refuse, register
from sldarts.spaces.base import Supernet

SKIP_DECAY = 0.2  # the official code: after the α warm-up the skip dropout decays as exp(-0.2 (epoch - warm-up))


PdartsOptions = config_options("PdartsOptions", "pdarts", "pdarts_cells",
                               "pdarts_keep", "pdarts_skip_drop", "pdarts_max_skip")


def _numbers(opts: PdartsOptions, key: str, kind: type) -> list:
    text = str(getattr(opts, key))
    try:
        values = [kind(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SldartsError(f"config: {key}={text!r} must be comma-separated {kind.__name__}s") from None
    if not values:
        raise SldartsError(f"config: {key} must not be empty")
    return values


def stage_plan(opts: PdartsOptions) -> tuple[list[int], list[int], list[float]]:
    """(cells per stage, ops kept after each stage but the last, skip dropout rate per stage), checked."""
    cells = _numbers(opts, "pdarts_cells", int)
    keep = _numbers(opts, "pdarts_keep", int) if len(cells) > 1 else []
    drop = _numbers(opts, "pdarts_skip_drop", float)
    n = len(cells)
    if len(keep) != n - 1 or len(drop) != n:
        raise SldartsError(f"config: pdarts_cells names {n} stages: pdarts_keep needs {n - 1} counts (ops kept "
                           f"after each stage but the last) and pdarts_skip_drop {n} rates; they have "
                           f"{len(keep)} and {len(drop)}")
    if min(cells) < 1 or any(a <= b for a, b in zip([9, *keep], keep, strict=False)) or min(keep, default=2) < 2:
        raise SldartsError(f"config: pdarts_cells must be >= 1 and pdarts_keep decreasing from 8 to >= 2 "
                           f"(an edge needs an op besides none); got cells {cells}, keep {keep}")
    if not all(0 <= d < 1 for d in drop):
        raise SldartsError(f"config: pdarts_skip_drop rates must lie in [0, 1); got {drop}")
    return cells, keep, drop


def prune(weights: Tensor, kept: list[list[int]], k: int) -> list[list[int]]:
    """Per edge (row of ``weights``), the ``k`` kept ops of largest activated weight (ties: the earlier op),
    in op order. ``none`` counts like any op, as in the official code's stages before the last."""
    out = []
    for row, ops in zip(weights.tolist(), kept, strict=True):
        best = sorted(ops, key=lambda j: (-row[j], j))[:k]
        out.append(sorted(best))
    return out


def skip_cap(weights: dict[str, Tensor], max_skip: int, derive: Callable[[dict[str, Tensor]], Any],
             skip: int) -> tuple[Any, list[int]]:
    """P-DARTS's limit on skip connections in the normal cell: while the derived normal cell has more than
    ``max_skip``, the skip edge with the smallest skip weight loses its skip (weight set to 0), so that it
    takes its next-best op and the node may take another input. Returns (genotype, the edges changed)."""
    w = {k: v.clone() for k, v in weights.items()}
    changed: list[int] = []
    while True:
        g = derive(w)
        edges = _skip_edges(g["normal"], w["normal"], skip)
        if len(edges) <= max_skip:
            return g, changed
        e = min(edges, key=lambda e: (float(w["normal"][e, skip]), e))
        w["normal"][e, skip] = 0.0
        changed.append(e)


def _skip_edges(gene: list[list], normal: Tensor, skip: int) -> list[int]:
    """α rows of the derived normal cell's skip connections (gene: [op, from-node] pairs, two per node)."""
    from sldarts.spaces.darts import OPS

    rows = []
    for i, (op, j) in enumerate(gene):
        node = i // 2
        if op == OPS[skip]:
            rows.append(sum(2 + n for n in range(node)) + j)
    return rows


class _Masked:
    """An activation with the pruned ops of each α row at -inf: they weigh exactly zero."""

    def __init__(self, inner: Any, masks: dict[int, Tensor]) -> None:
        self.inner, self.masks = inner, masks

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped activation's (a copy: not yet)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _mask(self, alpha: Tensor) -> Tensor:
        m = self.masks.get(id(alpha))
        return alpha if m is None else alpha.masked_fill(~m.to(alpha.device), float("-inf"))

    def __call__(self, alpha: Tensor) -> Tensor:
        return self.inner(self._mask(alpha))

    def forward_weights(self, alpha: Tensor, training: bool) -> Tensor:
        return self.inner.forward_weights(self._mask(alpha), training)


@register
class Progressive(Part):
    """One P-DARTS stage: its pruned candidates (``keep``, set by the stage driver) and the skip dropout."""

    name = "pdarts"
    title = "progressive search (P-DARTS)"
    Options = PdartsOptions
    on = "pdarts"
    fused_ok = False  # the fused cells compute skip connections inline: no dropout there
    sparse = True  # the pruned ops' weights get no gradient: DDP must look for unused parameters
    order = 14

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.stage = 0
        self.keep: dict[str, list[list[int]]] | None = None  # per α key and edge: the op indices left
        self.rate = 0.0
        self.warmup = 0

    @classmethod
    def from_config(cls, cfg: Any, extra: dict[str, Any] | None = None) -> Part:
        part = super().from_config(cfg, extra)
        part.warmup = int(getattr(cfg, "arch_warmup", 0))  # type: ignore[attr-defined]
        return part

    def adapt(self, model: Supernet) -> None:
        from sldarts.spaces.darts import DartsSupernet

        if not isinstance(model, DartsSupernet):
            raise refuse(self.title, "P-DARTS defines the DARTS space only (space=darts)")
        if getattr(model.activation, "sparse", False) or type(model.activation).__name__ not in ("Softmax", "Sigmoid"):
            raise refuse(self.title, "pruned ops are masked in α, which needs activation=softmax or sigmoid")
        stage_plan(self.opts)
        self.edges = mixing_edges(model)
        if self.keep is not None:
            masks = {}
            for key, rows in self.keep.items():
                m = torch.zeros(model.arch[key].shape, dtype=torch.bool)
                for e, ops in enumerate(rows):
                    m[e, ops] = True
                masks[id(model.arch[key])] = m
            model.activation = _Masked(model.activation, masks)
            for cell, key in model.search_cells():
                for e, mixed in enumerate(cell.edges):
                    mixed._live = [k for k in self.keep[key][e] if k in mixed._live]
        for m in self.edges:  # DARTS's skip_connect is an identity on stride-1 edges (the official code's rule)
            for op in m.candidate_modules():
                if isinstance(op, nn.Identity):
                    op.register_forward_hook(self._drop)

    def _drop(self, module: nn.Module, args: Any, out: Tensor) -> Tensor:
        if module.training and self.rate > 0:
            return nn.functional.dropout(out, self.rate, training=True)
        return out

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """The official schedule: linear decay to 0 over the stage during the α warm-up, exp(-0.2 t) after."""
        rate = stage_plan(self.opts)[2][min(self.stage, len(stage_plan(self.opts)[2]) - 1)]
        if epoch < self.warmup:
            self.rate = rate * (epochs - epoch - 1) / epochs
        else:
            self.rate = rate * math.exp(-(epoch - self.warmup) * SKIP_DECAY)
