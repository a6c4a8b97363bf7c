"""The NAS-Bench-201 search space written again with the public API (``sldarts.nn.Choice``), nothing else.

Every cell has 6 edges, each a ``Choice`` over the 5 NB201 ops; the edge ``j<-i`` of every cell shares one
label, so the whole network has one decision per edge, as NAS-Bench-201 searches it. Same weights as the
built-in supernet (1,692,826 on CIFAR-10), same derivation as an arch string.

    sldarts search space=examples/nb201_public_api.py:build epochs=5
    python examples/nb201_public_api.py            # a short search on digits, printed as an arch string
    sldarts bench --space nb201,examples/nb201_public_api.py:build --modes single
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from sldarts.nn import Choice, Zero
from sldarts.spaces.ops import ReLUConvBN, ResNetBasicBlock

EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), the arch string's order


def candidates(c: int) -> dict[str, nn.Module]:
    """NB201's ops in the supernet: non-affine BN (with running statistics), convs with a bias."""
    return {
        "none": Zero(1),
        "skip_connect": nn.Identity(),
        "nor_conv_1x1": ReLUConvBN(c, c, 1, 1, 0, affine=False, bias=True),
        "nor_conv_3x3": ReLUConvBN(c, c, 3, 1, 1, affine=False, bias=True),
        "avg_pool_3x3": nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False),
    }


class Cell(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(Choice(candidates(c), label=f"{j}<-{i}") for j, i in EDGES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        for j in (1, 2, 3):
            nodes.append(sum(self.edges[e](nodes[i]) for e, (to, i) in enumerate(EDGES) if to == j))
        return nodes[3]


class NB201(nn.Module):
    """Stem, three stages of N cells (C, 2C, 4C) joined by ResNet blocks, BN-ReLU, pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, c: int = 16, n: int = 5) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)]
        c_prev = c
        for stage, c_cur in enumerate((c, 2 * c, 4 * c)):
            if stage:
                layers.append(ResNetBasicBlock(c_prev, c_cur, 2))
            layers += [Cell(c_cur) for _ in range(n)]
            c_prev = c_cur
        layers += [nn.BatchNorm2d(c_prev), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build(num_classes: int, in_channels: int) -> nn.Module:
    return NB201(num_classes, in_channels)


def arch_string(choices: dict[str, str]) -> str:
    """A search result's choices as a NAS-Bench-201 arch string, e.g. |nor_conv_3x3~0|+|...~0|...~1|+|..."""
    nodes = []
    for j in (1, 2, 3):
        nodes.append("|" + "|".join(f"{choices[f'{j}<-{i}']}~{i}" for i in range(j)) + "|")
    return "+".join(nodes)


if __name__ == "__main__":
    import sldarts

    # a short single-level + sigmoid search on digits; pass key=value overrides to change it
    overrides = dict(a.split("=", 1) for a in sys.argv[1:])
    res = sldarts.search(space=f"{__file__}:build", **{"epochs": "3", "out": "runs/nb201-public-api",
                                                        "overwrite": "true", **overrides})
    print(arch_string(res["choices"]))
