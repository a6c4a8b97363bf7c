"""Your own network: a small ResNet whose blocks choose their kernel size, and whether to exist at all.

Each residual block's conv is a ``Choice`` of 3x3, 5x5 or a dilated 3x3; each block may also be replaced by
its skip connection (a parameter-free candidate, which the paper's collapse signal counts). The head picks
which two of the three stages' pooled features to keep (an ``InputChoice``). Searched single-level +
sigmoid on scikit-learn's digits (under a minute on 2 CPU cores), fixed into a plain network, retrained:

    python examples/resnet_choices.py
    sldarts search space=examples/resnet_choices.py:build epochs=10    # the same from the CLI
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch import nn

from sldarts.nn import Choice, InputChoice


def conv_bn(c: int, kernel: int, dilation: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c, c, kernel, padding=dilation * (kernel // 2), dilation=dilation, bias=False),
                         nn.BatchNorm2d(c), nn.ReLU())


class Block(nn.Module):
    """x + conv(x), where both the conv's shape and the block's existence are searched."""

    def __init__(self, c: int, name: str) -> None:
        super().__init__()
        self.body = Choice({
            "conv3": conv_bn(c, 3), "conv5": conv_bn(c, 5), "dil3": conv_bn(c, 3, dilation=2),
            "skip": nn.Identity(),
        }, label=name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class SmallResNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.stage1 = Block(c, "stage1")
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c),
                                  nn.ReLU())
        self.stage2 = Block(2 * c, "stage2")
        self.stage3 = Block(2 * c, "stage3")
        self.widen = nn.Linear(c, 2 * c)  # stage 1's pooled features, brought to 2c
        self.keep = InputChoice(3, 2, label="head")
        self.classifier = nn.Linear(2 * c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stage1(self.stem(x))
        b = self.stage2(self.down(a))
        c = self.stage3(b)
        feats = [self.widen(a.mean((2, 3))), b.mean((2, 3)), c.mean((2, 3))]
        return self.classifier(self.keep(feats))


def build(num_classes: int, in_channels: int) -> nn.Module:
    return SmallResNet(num_classes, in_channels)


def main(out: str = "runs/resnet-choices", epochs: int = 8, retrain_epochs: int = 3) -> dict:
    import sldarts

    res = sldarts.search(space=f"{__file__}:build", dataset="digits", optim="single", activation="sigmoid",
                         epochs=epochs, batch_size=64, out=out, overwrite=True, progress="lines", log_every=10)
    model = sldarts.fix(build(10, 1), res["choices"])  # a plain nn.Module: no Choice, no α
    params = sum(p.numel() for p in model.parameters())
    rt = sldarts.retrain(source_run=out, epochs=retrain_epochs, out=f"{out}-retrain", overwrite=True,
                         progress="lines")
    summary = {"choices": res["choices"], "param_free_ratio": res["param_free_ratio"],
               "supernet_valid_acc": res["valid_acc"], "fixed_params": params, "retrained_top1": rt["top1"]}
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main(**{k: (v if k == "out" else int(v)) for k, v in (a.split("=", 1) for a in sys.argv[1:])})
