"""A method part written outside the package, as a user would (docs/custom.md, "a method of your own"):
an L2 penalty on α with two options of its own, named on the command line as ``parts=userparts:L2``."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sldarts.methods import Part


@dataclass
class L2Options:
    l2_weight: float = field(default=0.0, metadata={"range": (0, None, False),
                                                    "help": "weight of the penalty on α in α's loss"})
    l2_reduce: str = field(default="sum", metadata={"choices": ("sum", "mean"),
                                                    "help": "sum or mean of α² over every entry"})


class L2(Part):
    """l2_weight · reduce(α²): a loss term on α; records its last value, so a test can see it was applied."""

    name = "l2"
    title = "L2 on α (a user's part)"
    Options = L2Options
    last: float | None = None

    def loss(self, model):
        a = torch.cat([p.reshape(-1) for p in model.arch.values()])
        value = self.opts.l2_weight * (a.pow(2).sum() if self.opts.l2_reduce == "sum" else a.pow(2).mean())
        type(self).last = float(value.detach())
        return value
