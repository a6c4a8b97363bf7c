"""The config keys of a search under a budget (:mod:`sldarts.budget`), in a module of their own that imports
nothing of the package but its errors, so that the config can carry them without importing the machinery."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sldarts.errors import SldartsError

COST_KINDS = ("macs", "params", "latency")
UNITS = {"macs": "MACs", "params": "params", "latency": "ms"}


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


def check_cost(value: str) -> None:
    if value and value not in COST_KINDS:
        raise SldartsError(f"config: cost={value!r} is not a cost kind; use cost=macs, cost=params or cost=latency "
                           "(or leave it empty for no cost term)")


@dataclass
class CostOptions:
    """The cost term's config keys (also fields of :class:`sldarts.config.SearchConfig`)."""

    cost: str = field(default="", metadata={"check": check_cost, "help": "search under a budget: macs, params "
                                            "or latency of the derived network (empty: no cost term)"})
    cost_weight: float = field(default=0.0, metadata={**_range(0), "help": "penalty λ on the expected cost "
                                                      "(as a share of the largest reachable cost)"})
    cost_target: float = field(default=0.0, metadata={**_range(0), "help": "budget T in the cost's units "
                                                      "(MACs, params, ms); the search adjusts a multiplier to meet it"})
    cost_lr: float = field(default=0.05, metadata={**_range(0, lo_open=True), "help": "step of the cost_target "
                                                   "multiplier per training step, times the relative overshoot"})
    cost_device: str = field(default="cpu", metadata={"choices": ("cpu", "cuda"), "help": "device latency is "
                                                      "timed on (cost=latency)"})
    cost_batch: int = field(default=1, metadata={**_range(1), "help": "batch size latency is timed at"})
    cost_threads: int = field(default=1, metadata={**_range(0), "help": "CPU threads latency is timed with "
                                                   "(0: torch's current number)"})
    cost_repeats: int = field(default=20, metadata={**_range(1), "help": "timed runs per entry; the median counts"})
    cost_cache: str = field(default="", metadata={"help": "latency table cache folder (default $SLDARTS_CACHE "
                                                  "or ~/.cache/sldarts)"})

    @classmethod
    def from_config(cls, cfg: Any) -> CostOptions:
        return cls(**{f: getattr(cfg, f) for f in cls.__dataclass_fields__})


def check_options(o: Any) -> None:
    """Cross-key checks (called by the config's validate)."""
    if not o.cost and (o.cost_weight or o.cost_target):
        key = "cost_target" if o.cost_target else "cost_weight"
        raise SldartsError(f"config: {key} needs a cost kind; add cost=macs, cost=params or cost=latency")
    if o.cost_weight and o.cost_target:
        raise SldartsError("config: give cost_weight (a penalty) or cost_target (a budget), not both")
