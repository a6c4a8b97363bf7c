"""DARTS+ (Liang et al., "DARTS+: improved differentiable architecture search with early stopping", 2019):
the search stops early, after the epoch in which

1. the normal cell's derived architecture holds ``dartsplus_max_skips`` or more skip connections
   (the paper: 2), or
2. the ranking of α, read as the op each edge's α ranks first (what derivation picks per edge), has not
   changed for ``dartsplus_patience`` epochs (the paper: 10).

The rules are read after every finished epoch; which one stopped the search and when is in result.json
(``stopped_early``). On NAS-Bench-201 the one cell counts as the normal cell (it is every cell of the
network); a user model has none, so rule 1 refuses it and rule 2 alone applies there. The history (the last
ranking, for how many epochs it has held, the reason) is saved in every checkpoint, so a resumed search stops
where the uninterrupted one would."""

from __future__ import annotations

from typing import Any

import torch

from sldarts.methods import Part, config_options, refuse, register
from sldarts.spaces.base import Supernet

EarlyStopOptions = config_options("EarlyStopOptions", "dartsplus_max_skips", "dartsplus_patience")


def normal_ops(arch: Any) -> list[str] | None:
    """The ops of the normal cell of a derived architecture: a DARTS genotype's normal cell, NAS-Bench-201's
    one cell; None where the space has no normal cell (a user model)."""
    normal = arch.get("normal") if isinstance(arch, dict) else getattr(arch, "normal", None)
    if normal is not None:
        return [op for op, _ in normal]
    if isinstance(arch, str):
        from sldarts.spaces.nb201 import parse_arch

        return parse_arch(arch)
    return None


def ranking(arch_params: dict[str, torch.Tensor]) -> list[list[int]]:
    """The op each edge's α ranks first, per α key (sorted), edge by edge."""
    return [a.detach().reshape(-1, a.shape[-1]).argmax(-1).tolist() for _, a in sorted(arch_params.items())]


@register
class EarlyStop(Part):
    name = "early_stop"
    title = "early stopping (DARTS+)"
    Options = EarlyStopOptions
    on = "dartsplus_patience"  # or dartsplus_max_skips (see enabled)
    order = 60

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        return bool(getattr(cfg, "dartsplus_max_skips", 0)) or bool(getattr(cfg, "dartsplus_patience", 0))

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.last: list[list[int]] | None = None
        self.stable = 0  # epochs the ranking has not changed
        self.reason: str | None = None

    def adapt(self, model: Supernet) -> None:
        if self.opts.dartsplus_max_skips and normal_ops(model.derive()) is None:
            raise refuse(self.title, f"the {type(model).__name__} supernet has no normal cell whose skip "
                         "connections could be counted; drop dartsplus_max_skips (dartsplus_patience applies)")

    def observe(self, epoch: int, skips: int | None, rank: list[list[int]]) -> None:
        """One finished epoch: the normal cell's skip count (None: not counted) and the α ranking."""
        self.stable = self.stable + 1 if rank == self.last else 0
        self.last = rank
        if self.reason:
            return
        top = self.opts.dartsplus_max_skips
        if top and skips is not None and skips >= top:
            self.reason = f"the normal cell derives {skips} skip connections (>= dartsplus_max_skips={top}) " \
                          f"after epoch {epoch}"
        elif self.opts.dartsplus_patience and self.stable >= self.opts.dartsplus_patience:
            self.reason = f"the ranking of α has not changed for {self.stable} epochs (dartsplus_patience=" \
                          f"{self.opts.dartsplus_patience}) after epoch {epoch}"

    def end_epoch(self, epoch: int, epochs: int, model: Supernet) -> None:
        ops = normal_ops(model.derive()) if self.opts.dartsplus_max_skips else None
        skips = None if ops is None else sum(op == "skip_connect" for op in ops)
        self.observe(epoch, skips, ranking(dict(model.arch.items())))

    def stop_reason(self) -> str | None:
        return self.reason

    def state_dict(self) -> dict[str, Any]:
        return {"last": self.last, "stable": self.stable, "reason": self.reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.last, self.stable, self.reason = state["last"], state["stable"], state["reason"]
