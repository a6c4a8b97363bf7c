"""RSPS (Li & Talwalkar, "Random search and reproducibility for NAS", UAI 2019): random search with weight
sharing. Every step trains one uniformly drawn architecture (the strategy ``optim=rsps``); at the end the
best of ``rsps_samples`` drawn architectures is selected instead of deriving from α."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from sldarts.methods import Part, refuse, register
from sldarts.spaces.base import Supernet
from sldarts.strategies import select_architecture


@dataclass
class RspsOptions:
    rsps_samples: int = field(default=100, metadata={"range": (1, None, False),
                                                     "help": "RSPS: architectures scored at the end"})
    rsps_batches: int = field(default=1, metadata={"range": (1, None, False),
                                                   "help": "RSPS: validation batches each is scored on"})


@register
class RandomSampling(Part):
    name = "rsps"
    title = "uniform architecture sampling (RSPS)"
    Options = RspsOptions
    fused_ok = False  # the reference cells, as before the parts (its numbers unchanged)
    order = 5

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return getattr(cfg, "optim", "") == "rsps"

    on = "optim"  # switched on by optim=rsps (see enabled)

    def adapt(self, model: Supernet) -> None:
        if type(model).sample_weights is Supernet.sample_weights:
            raise refuse(self.title, f"the {type(model).__name__} supernet cannot draw an architecture uniformly "
                         "(no sample_weights()); use another optim")
        # every op stays in the step (weight 0 for the unchosen): weight decay reaches them all, as it always has

    def select(self, model: Supernet, valid_batches: Callable[[int], list[tuple[Tensor, Tensor]]], seed: int
               ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(the best architecture's one-hot weights, what to record) instead of derivation from α: every
        drawn architecture is scored on the same first ``rsps_batches`` validation batches."""
        return best_of(self.name, model, valid_batches(self.opts.rsps_batches), self.opts.rsps_samples, seed)


def best_of(name: str, model: Supernet, batches: list[tuple[Tensor, Tensor]], samples: int, seed: int,
            draw: Callable[[], dict[str, Tensor]] | None = None, per_sample: int = 0
            ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(the best of ``samples`` drawn architectures, the record under ``name``): RSPS, SETN, ENAS."""
    weights, scores = select_architecture(model, batches, samples, seed, draw, per_sample)
    return weights, {name: {"samples": len(scores), "best_score": max(scores), "mean_score": sum(scores) / len(scores)}}

