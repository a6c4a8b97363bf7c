"""NAS-Bench-201 cell space: supernet for search, evaluation network, arch strings.

Layout as the benchmark defines it: stem 3x3 conv + BN; three stages of N cells (C, 2C, 4C channels)
joined by stride-2 ResNet basic blocks; BN + ReLU, global average pool, linear. A cell has 4 nodes and
6 edges (1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2); its output is node 3.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sldarts.activations import Activation, Sigmoid
from sldarts.errors import SldartsError
from sldarts.spaces.base import (
    CellGraph,
    Decision,
    MixedOp,
    SearchSpace,
    Supernet,
    param_free_share,
    stem_side,
    top_two,
)
from sldarts.spaces.kernels import lean_batch_norm
from sldarts.spaces.ops import NB201_OPS, ResNetBasicBlock

if TYPE_CHECKING:
    from sldarts.config import SearchConfig

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to, from), in arch-string order
NODES = 4
_SKIP, _CONV1, _CONV3, _POOL = (OPS.index(n) for n in ("skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"))

_NODE_RE = re.compile(r"^\|(?:[a-z0-9_]+~\d+\|)+$")


def parse_arch(text: str) -> list[str]:
    """``|a~0|+|b~0|c~1|+|d~0|e~1|f~2|`` -> [a, b, c, d, e, f] (edge order of :data:`EDGES`)."""
    if not isinstance(text, str):
        raise SldartsError(f"arch string must be text, got {type(text).__name__}")
    nodes = text.strip().split("+")
    if len(nodes) != NODES - 1:
        raise SldartsError(
            f"malformed NB201 arch string {text!r}: expected 3 nodes joined by '+', "
            "e.g. |nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
        )
    ops: list[str] = []
    for j, node in enumerate(nodes, start=1):
        if not _NODE_RE.match(node):
            raise SldartsError(f"malformed NB201 arch string {text!r}: node {j} part {node!r} is not |op~i|...")
        items = node.strip("|").split("|")
        if len(items) != j:
            raise SldartsError(f"malformed NB201 arch string {text!r}: node {j} needs {j} inputs, has {len(items)}")
        for i, item in enumerate(items):
            op, _, src = item.partition("~")
            if op not in OPS:
                raise SldartsError(f"unknown NB201 op {op!r} in arch string; ops are {', '.join(OPS)}")
            if int(src) != i:
                raise SldartsError(f"malformed NB201 arch string {text!r}: node {j} input {i} is written ~{src}")
            ops.append(op)
    return ops


def format_arch(ops: list[str]) -> str:
    if len(ops) != len(EDGES):
        raise SldartsError(f"an NB201 cell has {len(EDGES)} edges, got {len(ops)} ops")
    parts, e = [], 0
    for j in range(1, NODES):
        parts.append("|" + "|".join(f"{ops[e + i]}~{i}" for i in range(j)) + "|")
        e += j
    return "+".join(parts)


def edge_decisions(weights: Tensor, rule: str = "argmax") -> list[Decision]:
    """One op per edge by argmax of the activated weights (``none`` included, as NB201 does, unless
    ``rule="argmax-no-none"``), with the runner-up and the margin."""
    exclude = OPS.index("none") if rule == "argmax-no-none" else None
    return [Decision(f"{j}<-{i}", *top_two(weights[e], OPS, exclude)) for e, (j, i) in enumerate(EDGES)]


def derive_arch(weights: Tensor, rule: str = "argmax") -> str:
    return format_arch([d.winner for d in edge_decisions(weights, rule)])


class SearchCell(nn.Module):
    """Supernet cell: every edge a :class:`MixedOp` over the 5 ops (non-affine BN, conv with bias)."""

    def __init__(self, c: int, track: bool) -> None:
        super().__init__()

        def make(ch: int) -> dict[str, nn.Module]:
            return {name: NB201_OPS[name](ch, 1, False, track) for name in OPS}

        self.edges = nn.ModuleList(MixedOp(make(c), channels=c, make=make) for _ in EDGES)

    def forward(self, x: Tensor, weights: Tensor, factors: Tensor | None = None) -> Tensor:
        nodes = [x]
        e = 0
        for j in range(1, NODES):
            s = None
            for i in range(j):
                y = self.edges[e + i](nodes[i], weights[e + i])
                y = y if factors is None else factors[e + i] * y
                s = y if s is None else s + y
            nodes.append(s)
            e += j
        return nodes[-1]


class FusedSearchCell(nn.Module):
    """The same function as :class:`SearchCell`, reorganised for speed and memory.

    Per source node: one ReLU, one 3x3 and one 1x1 conv for *all* edges leaving it (their output
    channels stacked, followed by one non-affine BN over the stack, which is per-channel and so
    identical to separate BNs, and saving only its output: :mod:`sldarts.spaces.kernels`), one pooling
    shared by those edges; no tensor for ``none``.
    """

    def __init__(self, c: int, track: bool) -> None:
        super().__init__()
        self.c = c
        fan = [NODES - 1 - i for i in range(NODES - 1)]  # edges leaving node i: 3, 2, 1
        self.conv3 = nn.ModuleList(nn.Conv2d(c, k * c, 3, padding=1, bias=True) for k in fan)
        self.conv1 = nn.ModuleList(nn.Conv2d(c, k * c, 1, bias=True) for k in fan)
        self.bn3 = nn.ModuleList(nn.BatchNorm2d(k * c, affine=False, track_running_stats=track) for k in fan)
        self.bn1 = nn.ModuleList(nn.BatchNorm2d(k * c, affine=False, track_running_stats=track) for k in fan)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self._edge = {pair: e for e, pair in enumerate(EDGES)}

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        skip, conv1, conv3, pool = _SKIP, _CONV1, _CONV3, _POOL
        nodes = [x]
        acc: list[Tensor | None] = [None] * NODES
        for i in range(NODES - 1):
            xi = nodes[i]
            r = torch.relu(xi)
            c3 = lean_batch_norm(self.bn3[i], self.conv3[i](r)).split(self.c, dim=1)
            c1 = lean_batch_norm(self.bn1[i], self.conv1[i](r)).split(self.c, dim=1)
            p = self.pool(xi)
            for t, j in enumerate(range(i + 1, NODES)):
                w = weights[self._edge[(j, i)]]
                y = w[skip] * xi + w[conv1] * c1[t] + w[conv3] * c3[t] + w[pool] * p
                acc[j] = y if acc[j] is None else acc[j] + y
            nodes.append(acc[i + 1])
        return nodes[-1]

    @torch.no_grad()
    def load_reference(self, ref: SearchCell) -> None:
        """Copy a reference cell's parameters and BN statistics into the stacked layout."""
        for e, (j, i) in enumerate(EDGES):
            t = j - i - 1
            sl = slice(t * self.c, (t + 1) * self.c)
            for name, fused_conv, fused_bn in (("nor_conv_1x1", self.conv1[i], self.bn1[i]),
                                               ("nor_conv_3x3", self.conv3[i], self.bn3[i])):
                op = ref.edges[e].ops[OPS.index(name)]
                fused_conv.weight[sl] = op[1].weight
                fused_conv.bias[sl] = op[1].bias
                if op[2].running_mean is not None:
                    fused_bn.running_mean[sl] = op[2].running_mean
                    fused_bn.running_var[sl] = op[2].running_var


class InferCell(nn.Module):
    """Evaluation cell: one fixed op per edge, affine BN with running statistics, convs without bias."""

    def __init__(self, ops: list[str], c: int) -> None:
        super().__init__()
        self.edges = nn.ModuleList(NB201_OPS[name](c, 1, True, True) for name in ops)

    def forward(self, x: Tensor) -> Tensor:
        nodes = [x]
        e = 0
        for j in range(1, NODES):
            nodes.append(sum(self.edges[e + i](nodes[i]) for i in range(j)))
            e += j
        return nodes[-1]


class _Macro(nn.Module):
    """The benchmark's macro skeleton around any cell: stem, three stages of N cells joined by stride-2
    ResNet blocks, BN + ReLU, global pool, linear. Search and evaluation networks differ only in the cell."""

    def __init__(self, c: int, n: int, num_classes: int, in_channels: int, make_cell) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        layers: list[nn.Module] = []
        c_prev = c
        for stage, c_cur in enumerate((c, 2 * c, 4 * c)):
            if stage > 0:
                layers.append(ResNetBasicBlock(c_prev, c_cur, 2))
            layers.extend(make_cell(c_cur) for _ in range(n))
            c_prev = c_cur
        self.layers = nn.ModuleList(layers)
        self.lastact = nn.Sequential(nn.BatchNorm2d(c_prev), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(c_prev, num_classes)

    def head(self, x: Tensor) -> Tensor:
        x = self.lastact(x)
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def fit_stem(net: _Macro, in_channels: int, side: int) -> _Macro:
    """Large inputs: stride-2 3x3 conv + BN + ReLU before the benchmark's stem until the cells see at most
    32 px (the CIFAR resolution the benchmark's cells were designed for); the stem alone otherwise."""
    k = max(math.ceil(math.log2(side / 32)), 0) if side else 0
    if k:
        c = net.stem[0].out_channels
        layers: list[nn.Module] = []
        for i in range(k):
            layers += [nn.Conv2d(in_channels if i == 0 else c, c, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        net.stem = nn.Sequential(*layers, nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
    return net


class NB201Supernet(Supernet, _Macro):
    """The weight-sharing network; one α of shape (6, 5) shared by all cells."""

    op_names = OPS

    def __init__(self, channels: int = 16, cells: int = 5, num_classes: int = 10, in_channels: int = 3,
                 activation: Activation | None = None, alpha_init: float | None = None,
                 track_running_stats: bool = True, impl: str = "fused") -> None:
        if impl == "fused":
            make = lambda c: FusedSearchCell(c, track_running_stats)  # noqa: E731
        else:
            make = lambda c: SearchCell(c, track_running_stats)  # noqa: E731
        _Macro.__init__(self, channels, cells, num_classes, in_channels, make)
        self.activation = activation or Sigmoid()
        self.arch = nn.ParameterDict({"cell": nn.Parameter(torch.empty(len(EDGES), len(OPS)))})
        self.init_alphas(alpha_init)
        self.set_sparse(self.activation.sparse)

    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None,
                cell_weights: dict[int, Tensor] | None = None) -> Tensor:
        w = (weights or self.arch_weights())["cell"]
        factors = self.edge_factors("cell")
        x = self.stem(x)
        c = 0
        for layer in self.layers:
            if isinstance(layer, FusedSearchCell):
                x = layer(x, (cell_weights or {}).get(c, w))
                c += 1
            elif isinstance(layer, SearchCell):
                x = layer(x, (cell_weights or {}).get(c, w), factors)
                c += 1
            else:
                x = layer(x)
        return self.head(x)

    def node_groups(self) -> list[tuple[int, int]]:
        return [(0, 1), (1, 3), (3, 6)]  # edges into nodes 1, 2, 3

    def sample_weights(self) -> dict[str, Tensor]:
        """Each edge an op drawn uniformly from the 5 (``none`` included, as NB201's random search)."""
        idx = torch.randint(len(OPS), (len(EDGES),))
        return {"cell": nn.functional.one_hot(idx, len(OPS)).float().to(self.arch["cell"].device)}

    def edge_nodes(self) -> list[tuple[int, int]]:
        """(to, from) node of each α row."""
        return list(EDGES)

    def search_cells(self) -> list[tuple[nn.Module, str]]:
        """The search cells in order, each with the α key it uses."""
        return [(m, "cell") for m in self.layers if isinstance(m, (SearchCell, FusedSearchCell))]

    def op_params(self, cell: nn.Module) -> dict[tuple[int, str], list[tuple[nn.Parameter, slice]]]:
        """Parameters W_i of each (edge, op) of a cell, as (tensor, slice of its first dim)."""
        out: dict[tuple[int, str], list[tuple[nn.Parameter, slice]]] = {}
        all_rows = slice(None)
        for e, (j, i) in enumerate(EDGES):
            if isinstance(cell, FusedSearchCell):
                sl = slice((j - i - 1) * cell.c, (j - i) * cell.c)
                out[(e, "nor_conv_1x1")] = [(cell.conv1[i].weight, sl), (cell.conv1[i].bias, sl)]
                out[(e, "nor_conv_3x3")] = [(cell.conv3[i].weight, sl), (cell.conv3[i].bias, sl)]
            else:
                for name, op in zip(OPS, cell.edges[e].ops, strict=True):
                    params = [(p, all_rows) for p in op.parameters()]
                    if params:
                        out[(e, name)] = params
        return out

    def derive(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> str:
        return derive_arch((weights or self._activated())["cell"], rule)

    def decisions(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> list[Decision]:
        return edge_decisions((weights or self._activated())["cell"], rule)

    def param_free_ratio(self, arch: str) -> float:
        return param_free_share(parse_arch(arch))


class NB201Network(_Macro):
    """The benchmark's evaluation network for one arch string."""

    def __init__(self, arch: str, channels: int = 16, cells: int = 5, num_classes: int = 10,
                 in_channels: int = 3) -> None:
        ops = parse_arch(arch)
        super().__init__(channels, cells, num_classes, in_channels, lambda c: InferCell(ops, c))
        self.arch = arch

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class NB201Space(SearchSpace):
    """NAS-Bench-201: 6 edges x 5 ops, one cell shared by the network; arch strings; benchmark look-ups."""

    name = "nb201"
    arch_key = "arch"
    default_lr = 0.005  # the paper's NB201 runs
    default_cells = 5  # per stage
    default_recipe = "nb201"
    benchmark = True
    impls = ("reference", "fused")

    def supernet(self, cfg: SearchConfig, num_classes: int, in_channels: int) -> NB201Supernet:
        net = NB201Supernet(cfg.channels, self.num_cells(cfg.cells), num_classes, in_channels,
                            alpha_init=cfg.alpha_init, track_running_stats=cfg.bn_track_stats, impl=cfg.impl)
        return fit_stem(net, in_channels, stem_side(cfg))

    def parse(self, value: Any, source: str = "architecture") -> str:
        return format_arch(parse_arch(value))

    def param_free_ratio(self, arch: str) -> float:
        return param_free_share(parse_arch(arch))

    def eval_network(self, arch: Any, num_classes: int, in_channels: int, *, dataset: str = "cifar10",
                     channels: int | None = None, cells: int | None = None, auxiliary: bool = True,
                     side: int = 0) -> nn.Module:
        if dataset == "imagenet" and not side:
            raise SldartsError("NAS-Bench-201 networks are defined for cifar10, cifar100 and imagenet16-120")
        return fit_stem(NB201Network(self.parse(arch), channels or 16, cells or 5, num_classes, in_channels),
                        in_channels, side)

    def complexity_dataset(self, dataset: str) -> str:
        """The benchmark's three data sets; ImageNet searches count the ImageNet16-120 network."""
        if dataset in ("cifar10", "cifar100", "imagenet16-120"):
            return dataset
        return "imagenet16-120" if dataset == "imagenet" else "cifar10"

    def graphs(self, arch: str) -> list[CellGraph]:
        ops = parse_arch(arch)
        kinds = {0: "input", 3: "output"}
        nodes = [(str(i), f"node {i}", kinds.get(i, "node")) for i in range(NODES)]
        edges = [(str(i), str(j), op) for (j, i), op in zip(EDGES, ops, strict=True) if op != "none"]
        return [CellGraph("cell", nodes, edges)]

    def labels(self, key: str, rows: int) -> tuple[list[str], list[str] | None]:
        return [f"{t}<-{f}" for t, f in EDGES], list(OPS)

    def rederive(self, weights: dict[str, Tensor], rule: str = "argmax") -> tuple[str, list[Decision]]:
        return derive_arch(weights["cell"], rule), edge_decisions(weights["cell"], rule)


SPACE = NB201Space()
