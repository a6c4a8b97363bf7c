"""The mixing core shared by a space's :class:`~sldarts.spaces.base.MixedOp` and a user model's
:class:`~sldarts.nn.Choice`: the weighted sum of candidates, and the places where method parts hook in.

A part (:mod:`sldarts.methods`) never subclasses a space's edge; it sets these attributes on every
:class:`Mixing` module of a supernet after the space has built it:

- ``hard`` (GDAS, RSPS): the weights are one-hot; only the chosen candidate is computed, and the others'
  weights are added as they are (zero in value) so that their gradient still reaches α, as GDAS does;
- ``partial`` = K with ``bypass`` (PC-DARTS): the candidates (rebuilt for C/K channels) see the first C/K
  channels; the rest bypass the edge (max-pooled when it reduces) and a channel shuffle mixes the two;
- ``aux`` with ``aux_coef`` (DARTS-): a skip connection outside the weights, scaled by the coefficient;
- ``drop`` (DropNAS): while training, a function giving the candidates kept this forward (a list of bools);
  dropped ones are not computed and the kept ones' weights are renormalised to sum 1 (the softmax over the
  kept ops), so a dropped op's α gets no gradient.

What a part may rebuild is declared by the edge: ``make(channels)`` (the candidates for another channel
count) and ``stride``/``channels``; an edge without ``make`` has candidates that only its author can change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


class Zero(nn.Module):
    """The `none` op: zeros of the output shape (a mixed edge never computes it)."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave the channels of ``groups`` equal groups (PC-DARTS, after ShuffleNet)."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class Mixing(nn.Module):
    """Base of every mixed edge. Subclasses call :meth:`_init_mixing` and return their candidates from
    :meth:`candidate_modules`."""

    make: Callable[[int], dict[str, nn.Module]] | None = None  # candidates for another channel count
    channels: int | None = None  # input channels (None: unknown to the edge)
    stride: int = 1

    def _init_mixing(self, candidates: list[nn.Module]) -> None:
        self._live = [k for k, op in enumerate(candidates) if not isinstance(op, Zero)]
        self.hard = False
        self.partial = 1
        self.bypass: nn.Module | None = None
        self.aux: nn.Module | None = None
        self.aux_coef = 0.0
        self.drop: Callable[[], list[bool]] | None = None

    def candidate_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def set_candidates(self, candidates: dict[str, nn.Module]) -> None:
        """Replace the candidates (same names, same order): what partial channels does with ``make``."""
        raise NotImplementedError

    def _mix(self, weights: Tensor | None, args: tuple, kwargs: dict) -> Tensor:
        ops = self.candidate_modules()
        if self.hard and weights is not None:
            k = int(weights.argmax())
            return weights[k] * ops[k](*args, **kwargs) + (weights.sum() - weights[k])
        live = self._live
        if self.drop is not None and self.training and weights is not None:
            keep = self.drop()
            kept = [k for k in range(len(ops)) if keep[k]]
            weights = weights / weights[kept].sum()
            live = [k for k in live if keep[k]]
            if not live:  # only `none` kept: zeros of the output shape
                return ops[kept[0]](*args, **kwargs)
        out = None
        for k in live:
            y = ops[k](*args, **kwargs)
            y = y / len(ops) if weights is None else weights[k] * y
            out = y if out is None else out + y
        if out is None:  # only `none` (Zero) candidates
            return ops[0](*args, **kwargs)
        return out

    def mixed(self, weights: Tensor | None, *args, **kwargs) -> Tensor:
        """The edge's output for ``weights`` (None: every candidate weighs 1/n)."""
        if self.partial == 1:
            out = self._mix(weights, args, kwargs)
        else:
            x = args[0]
            c = x.shape[1] // self.partial
            rest = x[:, c:]
            out = torch.cat([self._mix(weights, (x[:, :c], *args[1:]), kwargs),
                             self.bypass(rest) if self.bypass is not None else rest], dim=1)
            out = channel_shuffle(out, self.partial)
        if self.aux is not None and self.aux_coef > 0:
            out = out + self.aux_coef * self.aux(args[0])
        return out
