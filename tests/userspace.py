"""What a user writes outside the package: a model with choices, a search space of their own, a data set.

Used by tests/test_custom.py through import paths (``space=tests/userspace.py:build``), exactly as a user's
project would be, without any change to ``src/``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sldarts.activations import Softmax
from sldarts.nn import Choice, InputChoice
from sldarts.spaces import CellGraph, SearchSpace, Supernet
from sldarts.spaces.base import Decision, MixedOp, top_two

C = 8  # channels


def conv(k: int) -> nn.Module:
    return nn.Conv2d(C, C, k, padding=k // 2)


def block_candidates() -> dict[str, nn.Module]:
    return {"conv3": conv(3), "conv5": conv(5), "skip": nn.Identity(), "pool": nn.AvgPool2d(3, 1, 1)}


class Net(nn.Module):
    """Two blocks that share one decision (label "block"), a 1x1-or-skip block, and an input choice that
    keeps 2 of the 3 block outputs. No BatchNorm, so gradients averaged over ranks equal one process's."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, C, 3, padding=1)
        self.b1 = Choice(block_candidates(), label="block")
        self.b2 = Choice(block_candidates(), label="block")
        self.b3 = Choice({"conv1": nn.Conv2d(C, C, 1), "skip": nn.Identity()})
        self.merge = InputChoice(3, 2, label="merge")
        self.head = nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        a = F.relu(self.b1(s))
        b = F.relu(self.b2(a))
        c = self.b3(b)
        return self.head(self.merge([a, b, c]).mean((2, 3)))


def build(num_classes: int, in_channels: int) -> nn.Module:
    return Net(num_classes, in_channels)


class HandNet(nn.Module):
    """The network a user would write by hand for given choices (the parameter count fix() must match)."""

    def __init__(self, block: str, b3: str, merge: list[int], num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, C, 3, padding=1)
        self.b1, self.b2 = block_candidates()[block], block_candidates()[block]
        self.b3 = nn.Conv2d(C, C, 1) if b3 == "conv1" else nn.Identity()
        self.merge = merge
        self.head = nn.Linear(C, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.relu(self.stem(x))
        a = F.relu(self.b1(s))
        b = F.relu(self.b2(a))
        outs = [a, b, self.b3(b)]
        return self.head(sum(outs[i] for i in self.merge).mean((2, 3)))


class Digits(torch.utils.data.Dataset):
    """scikit-learn's digits as float tensors; training items get a random horizontal shift (global RNG)."""

    def __init__(self, train: bool) -> None:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
        y = torch.tensor(d.target)
        self.x, self.targets = (x[:1500], y[:1500]) if train else (x[1500:], y[1500:])
        self.train = train

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.train:
            x = torch.roll(x, int(torch.randint(-1, 2, ())), dims=-1)
        return x, int(self.targets[i])


def digits() -> tuple[Digits, Digits]:
    return Digits(True), Digits(False)


class BadData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        return [1.0, 2.0], "seven"


def bad_data():
    return BadData(), BadData()


def not_a_model(num_classes: int, in_channels: int) -> int:
    return 3


def no_choice(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Linear(4, num_classes)


# -- a search space written against the SearchSpace contract ---------------------------------------

OPS = ("conv3", "skip", "pool")


def chain_ops(c: int) -> dict[str, nn.Module]:
    """The candidates of one chain layer on ``c`` channels (what partial channels rebuilds narrower)."""
    return {"conv3": nn.Conv2d(c, c, 3, padding=1), "skip": nn.Identity(), "pool": nn.AvgPool2d(3, 1, 1)}


class ChainSupernet(Supernet):
    """``depth`` layers in a chain; every layer a MixedOp of OPS (one α row each). It follows the whole
    Supernet contract: α in ``self.arch``, edges that parts can wrap (``MixedOp`` with ``make``), derivation
    from ``_activated()`` or given weights with the derive rule, uniform sampling for RSPS; it reads no
    method key (the method's sampler and parts are applied after it is built)."""

    op_names = OPS

    def __init__(self, depth: int, num_classes: int, in_channels: int, alpha_init: float | None = None) -> None:
        super().__init__()
        self.activation = Softmax()
        self.stem = nn.Conv2d(in_channels, C, 3, padding=1)
        self.layers = nn.ModuleList(MixedOp(chain_ops(C), channels=C, make=chain_ops) for _ in range(depth))
        self.head = nn.Linear(C, num_classes)
        self.arch = nn.ParameterDict({"chain": nn.Parameter(torch.empty(depth, len(OPS)))})
        self.init_alphas(alpha_init)

    def forward(self, x, weights=None, cell_weights=None):
        w = (weights or self.arch_weights())["chain"]
        x = F.relu(self.stem(x))
        for row, op in zip(w, self.layers, strict=True):
            x = F.relu(op(x, row))
        return self.head(x.mean((2, 3)))

    def derive(self, rule: str = "argmax", weights=None) -> list[str]:
        """The argmax op per layer (the chain has no `none` op, so both rules agree)."""
        return [OPS[int(k)] for k in (weights or self._activated())["chain"].argmax(-1)]

    def decisions(self, rule: str = "argmax", weights=None) -> list[Decision]:
        w = (weights or self._activated())["chain"]
        return [Decision(f"layer{i}", *top_two(row, OPS)) for i, row in enumerate(w)]

    def sample_weights(self):
        depth = self.arch["chain"].shape[0]
        picks = torch.randint(len(OPS), (depth,))
        return {"chain": torch.nn.functional.one_hot(picks, len(OPS)).float().to(self.arch["chain"].device)}

    def param_free_ratio(self, arch: list[str]) -> float:
        return chain.param_free_ratio(arch)


class ChainNet(nn.Module):
    def __init__(self, ops: list[str], num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, C, 3, padding=1)
        make = {"conv3": lambda: conv(3), "skip": nn.Identity, "pool": lambda: nn.AvgPool2d(3, 1, 1)}
        self.layers = nn.ModuleList(make[op]() for op in ops)
        self.head = nn.Linear(C, num_classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for op in self.layers:
            x = F.relu(op(x))
        return self.head(x.mean((2, 3)))


class ChainSpace(SearchSpace):
    name = "chain"
    arch_key = "ops"
    default_lr = 0.05
    default_cells = 3

    def supernet(self, cfg, num_classes, in_channels):
        return ChainSupernet(self.num_cells(cfg.cells), num_classes, in_channels, cfg.alpha_init)

    def parse(self, value, source="architecture"):
        import json

        from sldarts.errors import SldartsError

        ops = json.loads(value) if isinstance(value, str) else value
        if not isinstance(ops, list) or not all(op in OPS for op in ops):
            raise SldartsError(f"{source}: a chain is a JSON list of {', '.join(OPS)}")
        return ops

    def param_free_ratio(self, arch):
        return sum(op != "conv3" for op in arch) / len(arch)

    def eval_network(self, arch, num_classes, in_channels, *, dataset="cifar10", channels=None, cells=None,
                     auxiliary=True):
        return ChainNet(self.parse(arch), num_classes, in_channels)

    def graphs(self, arch):
        nodes = [(str(i), f"x{i}", "input" if i == 0 else "output" if i == len(arch) else "node")
                 for i in range(len(arch) + 1)]
        return [CellGraph("chain", nodes, [(str(i), str(i + 1), op) for i, op in enumerate(arch)])]


chain = ChainSpace()
