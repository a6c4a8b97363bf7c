"""DropNAS (Hong et al., "DropNAS: grouped operation dropout for differentiable architecture search",
IJCAI 2020): on every edge, while the supernet trains, the parameter-free ops (``none``, skip, pools) and the
parameterised ops form two groups; each op is dropped with probability r = p_d^(1/|G|) for its group G, so
that a whole group would drop with probability p_d, and a group whose ops were all dropped is drawn again
(the official code), so neither group, and never the whole edge, is ever dropped. Dropped ops are not
computed (their output is zero); the kept ops are weighted by the softmax over the kept ops alone,
exp(α_o) / Σ_kept exp(α), so a dropped op's α gets no gradient. There is no 1/(1−r) rescaling of the
kept ops: the renormalised softmax is all the scaling the paper does.

The official code's α-adjust after each step and its partial weight decay (decay only on what the step
touched) are not reproduced (docs/methods.md)."""

from __future__ import annotations

import torch

from sldarts.methods import Part, config_options, mixing_edges, refuse, register
from sldarts.mixing import Mixing
from sldarts.spaces.base import Supernet
from sldarts.spaces.ops import PARAM_FREE

DropOptions = config_options("DropOptions", "dropnas_rate")


def op_groups(m: Mixing) -> list[list[int]]:
    """The candidate indices of an edge in two groups, parameter-free then parameterised (empty groups left
    out): by name where the edge names its candidates (the space's PARAM_FREE set, so a reducing skip that
    is a factorized convolution stays parameter-free, as in DropNAS), else by whether a module has parameters."""
    ops = m.candidate_modules()
    names = getattr(m, "names", None)
    names = names() if callable(names) else names
    if names is not None and len(names) == len(ops):
        free = [name in PARAM_FREE for name in names]
    else:
        free = [next(op.parameters(), None) is None for op in ops]
    groups = [[k for k, f in enumerate(free) if f], [k for k, f in enumerate(free) if not f]]
    return [g for g in groups if g]


def op_rate(p_d: float, size: int) -> float:
    """Each op's drop probability in a group of ``size`` ops: r with r^size = p_d."""
    return p_d ** (1.0 / size)


def draw_mask(groups: list[list[int]], n: int, p_d: float) -> list[bool]:
    """Which of ``n`` candidates are kept: each op of group G dropped with r = p_d^(1/|G|), a group whose
    ops were all dropped drawn again (torch's generator, so a resumed run draws the same masks)."""
    keep = [True] * n
    for g in groups:
        r = op_rate(p_d, len(g))
        while True:
            kept = (torch.rand(len(g)) >= r).tolist()
            if any(kept):
                break
        for k, flag in zip(g, kept, strict=True):
            keep[k] = flag
    return keep


@register
class GroupedDrop(Part):
    name = "grouped_drop"
    title = "grouped operation dropout (DropNAS)"
    Options = DropOptions
    on = "dropnas_rate"
    fused_ok = False
    sparse = True  # a dropped op's weights are unused in its step (torchrun's DDP must look for them)
    order = 13

    def adapt(self, model: Supernet) -> None:
        edges = mixing_edges(model)
        if not edges:
            raise refuse(self.title, f"the {type(model).__name__} supernet has no mixed ops; drop dropnas_rate")
        if model.activation.name != "softmax":
            raise refuse(self.title, f"it renormalises the softmax over the kept ops; activation="
                         f"{model.activation.name} has no such softmax: use activation=softmax")
        p_d = self.opts.dropnas_rate
        if p_d >= 1:
            raise refuse(self.title, f"dropnas_rate={p_d:g} would drop every op of every group; use a rate below 1 "
                         "(the paper: 3e-5)")
        for m in edges:
            groups, n = op_groups(m), len(m.candidate_modules())
            m.drop = lambda groups=groups, n=n: draw_mask(groups, n, p_d)
