"""α warm-up (PC-DARTS's recipe: no architecture step in the first 15 epochs, only the weights train)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sldarts.methods import Part, register


@dataclass
class WarmupOptions:
    arch_warmup: int = field(default=0, metadata={
        "range": (0, None, False), "help": "epochs at the start in which α is not updated (PC-DARTS: 15)"})


@register
class ArchWarmup(Part):
    name = "arch_warmup"
    title = "α warm-up"
    Options = WarmupOptions
    on = "arch_warmup"
    order = 40

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.epoch = 0

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.epoch = epoch

    def updates_alpha(self) -> bool:
        return self.epoch >= self.opts.arch_warmup
