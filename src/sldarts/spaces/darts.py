"""DARTS cell space: search network (CIFAR and ImageNet stems), genotypes and their derivation.

A cell takes the two previous cells' outputs, has 4 intermediate nodes fed by every earlier node
(14 edges) and outputs the concatenation of the 4 nodes. Normal and reduction cells have their own α.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sldarts.activations import Activation, Softmax
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
from sldarts.spaces.kernels import lean_batch_norm, separable_conv
from sldarts.spaces.ops import DARTS_OPS, FactorizedReduce, ReLUConvBN, SepConv, bn

if TYPE_CHECKING:
    from sldarts.config import SearchConfig

OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
       "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
STEPS = 4
EDGES = sum(2 + i for i in range(STEPS))  # 14
CONCAT = [2, 3, 4, 5]

Genotype = dict[str, Any]


def reduction_layers(layers: int) -> tuple[int, int]:
    return layers // 3, 2 * layers // 3


def cell_decisions(weights: Tensor, cell: str = "normal") -> tuple[list[list], list[Decision]]:
    """DARTS rule: per node keep the 2 inputs whose strongest non-`none` op is largest, then that op
    (``none`` is never derived, so both DERIVE_RULES agree). Returns (gene, decisions): the op margin of
    each kept edge and, per node with a dropped edge, the last kept edge's strength minus the first
    dropped one's."""
    w = weights.detach().float().cpu()
    none = OPS.index("none")
    gene: list[list] = []
    out: list[Decision] = []
    start = 0
    for i in range(STEPS):
        n = 2 + i
        block = w[start:start + n].clone()
        block[:, none] = -float("inf")
        strength = block.max(dim=1).values
        order = sorted(range(n), key=lambda j: -float(strength[j]))
        for j in order[:2]:
            op, runner, margin = top_two(block[j], OPS, none)
            gene.append([op, j])
            out.append(Decision(f"{cell}/{i + 2}<-{j}", op, runner, margin))
        if n > 2:
            kept, dropped = order[1], order[2]
            out.append(Decision(f"{cell}/node{i + 2}", f"edge {i + 2}<-{kept}", f"edge {i + 2}<-{dropped}",
                                float(strength[kept] - strength[dropped])))
        start += n
    return gene, out


def derive_cell(weights: Tensor) -> list[list]:
    return cell_decisions(weights)[0]


def make_genotype(normal: list[list], reduce: list[list]) -> Genotype:
    return {"normal": normal, "normal_concat": list(CONCAT), "reduce": reduce, "reduce_concat": list(CONCAT)}


def check_genotype(g: Any, source: str = "genotype") -> Genotype:
    """Validate a genotype dict read from JSON; raise one clear error otherwise."""
    if not isinstance(g, dict):
        raise SldartsError(f"{source}: a genotype is a JSON object with normal/reduce lists")
    out: Genotype = {}
    for cell in ("normal", "reduce"):
        pairs = g.get(cell)
        if not isinstance(pairs, list) or len(pairs) != 2 * STEPS:
            raise SldartsError(f"{source}: '{cell}' must be a list of {2 * STEPS} [op, input] pairs")
        clean = []
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise SldartsError(f"{source}: {cell}[{k}] must be [op, input], got {pair!r}")
            op, src = pair
            if op not in OPS or op == "none":
                raise SldartsError(f"{source}: {cell}[{k}] has unknown op {op!r}; ops are {', '.join(OPS[1:])}")
            node = k // 2
            if isinstance(src, bool) or not isinstance(src, int) or not 0 <= src < node + 2:
                raise SldartsError(f"{source}: {cell}[{k}] input {src!r} must be an int in 0..{node + 1}")
            clean.append([op, src])
        out[cell] = clean
        concat = g.get(f"{cell}_concat", CONCAT)
        if not isinstance(concat, list) or not concat or not all(
            isinstance(c, int) and not isinstance(c, bool) and 0 <= c < STEPS + 2 for c in concat
        ):
            raise SldartsError(f"{source}: '{cell}_concat' must be a list of node ids in 0..{STEPS + 1}")
        out[f"{cell}_concat"] = list(concat)
    return out


def load_genotype(path: str | Path) -> Genotype:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise SldartsError(f"genotype file {p} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SldartsError(f"genotype file {p} is not valid JSON ({exc})") from None
    return check_genotype(data, str(p))


def _after_relu(op: nn.Module, r: Tensor) -> Tensor:
    """Run a conv op (SepConv, DilConv, FactorizedReduce) on an input that is already ReLU-ed, through
    the lean kernels of :mod:`sldarts.spaces.kernels` (same values, less memory and time)."""
    if isinstance(op, FactorizedReduce):
        return lean_batch_norm(op.bn, op.convs(r))
    if isinstance(op, SepConv):  # [ReLU, dw, pw, BN] twice
        first, second = op[0], op[1]
        z = separable_conv(first[1], first[2], r)
        return lean_batch_norm(second[3], separable_conv(second[1], second[2], z, pre_bn=first[3]))
    return lean_batch_norm(op[3], separable_conv(op[1], op[2], r))  # DilConv: ReLU, dw, pw, BN


class SearchCell(nn.Module):
    """DARTS supernet cell. ``fused=True`` computes the same function with less work: one ReLU per
    input state shared by every conv op of every edge that reads it, and each pooling (+ its non-affine
    BN, whose output depends only on the input) once per input state instead of once per edge."""

    def __init__(self, c_pp: int, c_p: int, c: int, reduction: bool, reduction_prev: bool, track: bool,
                 fused: bool = False) -> None:
        super().__init__()
        self.reduction = reduction
        self.fused = fused
        self.pre0 = (FactorizedReduce(c_pp, c, False, track) if reduction_prev
                     else ReLUConvBN(c_pp, c, 1, 1, 0, False, track))
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, False, track)
        edges = []
        for i in range(STEPS):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                make = functools.partial(_edge_ops, stride=stride, track=track)
                edges.append(MixedOp(make(c), stride=stride, channels=c, make=make))
        self.edges = nn.ModuleList(edges)

    def forward(self, s0: Tensor, s1: Tensor, weights: Tensor, factors: Tensor | None = None) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        edge = self._fused_edge if self.fused else (lambda e, j, st, w, cache: self.edges[e](st[j], w))
        cache: dict = {}
        e = 0
        for _ in range(STEPS):
            s = None
            for j in range(len(states)):
                y = edge(e + j, j, states, weights[e + j], cache)
                y = y if factors is None else factors[e + j] * y
                s = y if s is None else s + y
            e += len(states)
            states.append(s)
        return torch.cat(states[-STEPS:], dim=1)

    def _fused_edge(self, e: int, j: int, states: list[Tensor], w: Tensor, cache: dict) -> Tensor:
        mixed = self.edges[e]
        x = states[j]
        out = None
        for k in mixed._live:
            name, op = mixed.names[k], mixed.ops[k]
            if "pool" in name:
                key = (j, name)
                if key not in cache:
                    cache[key] = (lean_batch_norm(op[1], op[0](x)), op[1])
                else:  # same input, same output; keep this edge's BN statistics equal to the reference's
                    first = cache[key][1]
                    if op[1].running_mean is not None and self.training:
                        with torch.no_grad():
                            op[1].running_mean.copy_(first.running_mean)
                            op[1].running_var.copy_(first.running_var)
                            op[1].num_batches_tracked.copy_(first.num_batches_tracked)
                y = cache[key][0]
            elif isinstance(op, nn.Identity):
                y = x
            else:
                if ("relu", j) not in cache:
                    cache[("relu", j)] = torch.relu(x)
                y = _after_relu(op, cache[("relu", j)])
            y = w[k] * y
            out = y if out is None else out + y
        return out if out is not None else mixed.ops[0](x)


def _edge_ops(c: int, stride: int, track: bool) -> dict[str, nn.Module]:
    """The candidates of one supernet edge on ``c`` channels."""
    ops = {}
    for name in OPS:
        op = DARTS_OPS[name](c, stride, False, track)
        if "pool" in name:  # DARTS: pools get a non-affine BN in the supernet
            op = nn.Sequential(op, bn(c, False, track))
        ops[name] = op
    return ops


def make_stem(in_channels: int, c: int, imagenet: bool, multiplier: int = 3
              ) -> tuple[nn.Module, nn.Module | None, int, int, bool]:
    """(stem0, stem1, C_{k-2}, C_{k-1}, reduction_prev). CIFAR: one 3x3 conv to multiplier*C. ImageNet:
    three stride-2 3x3 convs (÷8) before the first cell, as DARTS's ImageNet network (and PC-DARTS's
    ImageNet search network) has them; stem1 gives the first cell its second input."""
    if not imagenet:
        return (nn.Sequential(nn.Conv2d(in_channels, multiplier * c, 3, padding=1, bias=False),
                              nn.BatchNorm2d(multiplier * c)), None, multiplier * c, multiplier * c, False)
    half = max(c // 2, 1)
    stem0 = nn.Sequential(
        nn.Conv2d(in_channels, half, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(half), nn.ReLU(inplace=True),
        nn.Conv2d(half, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c))
    stem1 = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
                          nn.BatchNorm2d(c))
    return stem0, stem1, c, c, True


def stack_cells(layers: int, c: int, c_pp: int, c_p: int, reduction_prev: bool, make_cell
                ) -> tuple[nn.ModuleList, int, int]:
    """``layers`` cells with reductions (doubling C) at 1/3 and 2/3. ``make_cell(c_pp, c_p, c, reduction,
    reduction_prev)`` builds one. Returns (cells, channels out of the last cell, channels out of the 2/3 cell)."""
    reductions = reduction_layers(layers)
    c_cur, c_aux = c, c_p
    cells = []
    for i in range(layers):
        reduction = i in reductions
        if reduction:
            c_cur *= 2
        cell = make_cell(c_pp, c_p, c_cur, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        c_pp, c_p = c_p, getattr(cell, "multiplier", STEPS) * c_cur
        if i == 2 * layers // 3:
            c_aux = c_p
    return nn.ModuleList(cells), c_p, c_aux


class DartsSupernet(Supernet):
    """DARTS search network: C=16, 8 cells, reductions at 1/3 and 2/3.

    ``imagenet=True`` follows the paper's direct ImageNet search: the input is downsampled three
    times by stride-2 convolutions before the first cell (as in PC-DARTS's ImageNet search network).
    """

    op_names = OPS

    def __init__(self, channels: int = 16, layers: int = 8, num_classes: int = 10, in_channels: int = 3,
                 activation: Activation | None = None, alpha_init: float | None = None,
                 track_running_stats: bool = True, imagenet: bool = False, stem_multiplier: int = 3,
                 impl: str = "fused") -> None:
        super().__init__()
        self.activation = activation or Softmax()
        self.stem0, self.stem1, c_pp, c_p, reduction_prev = make_stem(in_channels, channels, imagenet,
                                                                      stem_multiplier)
        self.cells, c_p, _ = stack_cells(
            layers, channels, c_pp, c_p, reduction_prev,
            lambda *a: SearchCell(*a, track_running_stats, fused=impl == "fused"))
        self.classifier = nn.Linear(c_p, num_classes)
        self.arch = nn.ParameterDict({
            "normal": nn.Parameter(torch.empty(EDGES, len(OPS))),
            "reduce": nn.Parameter(torch.empty(EDGES, len(OPS))),
        })
        self.init_alphas(alpha_init)
        self.set_sparse(self.activation.sparse)

    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None,
                cell_weights: dict[int, Tensor] | None = None) -> Tensor:
        """``cell_weights`` gives the c-th cell its own weight tensor (for dL/dp of one cell)."""
        w = weights or self.arch_weights()
        factors = {k: self.edge_factors(k) for k in ("normal", "reduce")}
        s0 = self.stem0(x)
        s1 = self.stem1(s0) if self.stem1 is not None else s0
        for c, cell in enumerate(self.cells):
            key = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, (cell_weights or {}).get(c, w[key]), factors[key])
        out = nn.functional.adaptive_avg_pool2d(s1, 1)
        return self.classifier(torch.flatten(out, 1))

    def node_groups(self) -> list[tuple[int, int]]:
        starts = [sum(2 + k for k in range(i)) for i in range(STEPS)]
        return [(a, a + 2 + i) for i, a in enumerate(starts)]

    def sample_weights(self) -> dict[str, Tensor]:
        """Per cell type and node: 2 distinct inputs drawn uniformly, each with an op drawn uniformly from
        the 7 that are not ``none`` (the other edges' rows stay zero: they contribute nothing)."""
        out = {}
        for key in ("normal", "reduce"):
            w = torch.zeros(EDGES, len(OPS))
            for a, b in self.node_groups():
                for j in torch.randperm(b - a)[:2].tolist():
                    w[a + j, 1 + int(torch.randint(len(OPS) - 1, ()))] = 1.0
            out[key] = w.to(self.arch[key].device)
        return out

    def edge_nodes(self) -> list[tuple[int, int]]:
        """(to, from) node of each α row; nodes 0, 1 are the cell inputs, 2..5 the intermediate nodes."""
        return [(i + 2, j) for i in range(STEPS) for j in range(2 + i)]

    def search_cells(self) -> list[tuple[nn.Module, str]]:
        return [(c, "reduce" if c.reduction else "normal") for c in self.cells]

    def op_params(self, cell: nn.Module) -> dict[tuple[int, str], list[tuple[nn.Parameter, slice]]]:
        out: dict[tuple[int, str], list[tuple[nn.Parameter, slice]]] = {}
        for e, mixed in enumerate(cell.edges):
            for name, op in zip(OPS, mixed.ops, strict=True):
                params = [(p, slice(None)) for p in op.parameters()]
                if params:
                    out[(e, name)] = params
        return out

    def derive(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> Genotype:
        return SPACE.rederive(weights or self._activated(), rule)[0]

    def decisions(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> list[Decision]:
        return SPACE.rederive(weights or self._activated(), rule)[1]

    def param_free_ratio(self, genotype: Genotype) -> float:
        return SPACE.param_free_ratio(genotype)


# -- evaluation networks (retraining a derived cell) ---------------------------------------------

def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zero whole samples of a branch with probability p and rescale the rest (DARTS)."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    """A fixed cell: two ops per node as the genotype says, affine BN, drop path in training."""

    def __init__(self, genotype: Genotype, c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.pre0 = FactorizedReduce(c_pp, c, True) if reduction_prev else ReLUConvBN(c_pp, c, 1, 1, 0, True)
        self.pre1 = ReLUConvBN(c_p, c, 1, 1, 0, True)
        pairs = genotype["reduce" if reduction else "normal"]
        self.concat = genotype["reduce_concat" if reduction else "normal_concat"]
        self.indices = [src for _, src in pairs]
        self.ops = nn.ModuleList(
            DARTS_OPS[op](c, 2 if reduction and src < 2 else 1, True, True) for op, src in pairs)
        self.multiplier = len(self.concat)

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        for i in range(len(self.ops) // 2):
            hs = []
            for k in (2 * i, 2 * i + 1):
                h = self.ops[k](states[self.indices[k]])
                if self.training and drop_prob > 0 and not isinstance(self.ops[k], nn.Identity):
                    h = drop_path(h, drop_prob)
                hs.append(h)
            states.append(hs[0] + hs[1])
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS auxiliary classifier: CIFAR for 8x8 inputs (pool stride 3), ImageNet for 14x14 (stride 2;
    DARTS omits the BN after the 2x2 conv there, and so do we, to keep its published counts)."""

    def __init__(self, c: int, num_classes: int, imagenet: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False),
            nn.Conv2d(c, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        need = 5 + self.features[1].stride  # the 5x5 pool must leave 2x2 for the 2x2 conv
        if min(x.shape[-2:]) < need:
            raise SldartsError(f"the auxiliary head needs at least {need}x{need} features at the 2/3 cell, got "
                               f"{x.shape[-2]}x{x.shape[-1]}: use larger images or auxiliary_weight=0")
        return self.classifier(torch.flatten(self.features(x), 1))


class DartsNetwork(nn.Module):
    """DARTS evaluation network. CIFAR: stem conv to 3C, C=36, 20 layers. ImageNet (mobile setting):
    three stride-2 stem convs, C=48, 14 layers, 7x7 average pool. Auxiliary head after the 2/3 cell.

    ``forward`` returns ``(logits, aux_logits)``; aux_logits is None outside training or without head.
    """

    def __init__(self, genotype: Genotype, channels: int = 36, layers: int = 20, num_classes: int = 10,
                 auxiliary: bool = True, imagenet: bool = False, in_channels: int = 3) -> None:
        super().__init__()
        self.imagenet = imagenet
        self.drop_path_prob = 0.0
        self.stem0, self.stem1, c_pp, c_p, reduction_prev = make_stem(in_channels, channels, imagenet)
        self.aux_at = 2 * layers // 3
        self.cells, c_p, c_aux = stack_cells(layers, channels, c_pp, c_p, reduction_prev,
                                             lambda *a: EvalCell(genotype, *a))
        self.aux_head = AuxiliaryHead(c_aux, num_classes, imagenet) if auxiliary else None
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        s0 = self.stem0(x)
        s1 = self.stem1(s0) if self.stem1 is not None else s0
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_at and self.aux_head is not None and self.training:
                aux = self.aux_head(s1)
        out = nn.functional.adaptive_avg_pool2d(s1, 1)
        return self.classifier(torch.flatten(out, 1)), aux


def darts_graph(genotype: Genotype, cell: str) -> CellGraph:
    pairs, concat = genotype[cell], genotype[f"{cell}_concat"]
    steps = len(pairs) // 2
    names = ["c_{k-2}", "c_{k-1}"] + [str(i) for i in range(steps)]
    nodes = [(names[0], names[0], "input"), (names[1], names[1], "input")]
    nodes += [(str(i), str(i), "node") for i in range(steps)] + [("c_{k}", "c_{k}", "output")]
    edges = [(names[src], str(k // 2), op) for k, (op, src) in enumerate(pairs)]
    edges += [(names[c], "c_{k}", "") for c in concat]
    return CellGraph(cell, nodes, edges)


def uses_imagenet_stem(cfg: SearchConfig) -> bool:
    """stem=auto: the ImageNet stem (÷8) for ImageNet and for inputs larger than 64 pixels (the side of
    the searched images, else ``image_size``); an explicit ``stem=`` wins."""
    if cfg.stem != "auto":
        return cfg.stem == "imagenet"
    return cfg.dataset == "imagenet" or stem_side(cfg) > 64


class DartsSpace(SearchSpace):
    """The DARTS space: normal + reduction cells, 14 edges x 8 ops, two inputs kept per node; genotypes."""

    name = "darts"
    arch_key = "genotype"
    transfer_dataset = "imagenet"  # the mobile setting of its papers' ImageNet tables
    default_lr = 0.025
    default_cells = 8
    default_recipe = "darts-cifar"
    impls = ("reference", "fused")

    def supernet(self, cfg: SearchConfig, num_classes: int, in_channels: int) -> DartsSupernet:
        return DartsSupernet(cfg.channels, self.num_cells(cfg.cells), num_classes, in_channels,
                             alpha_init=cfg.alpha_init, track_running_stats=cfg.bn_track_stats,
                             imagenet=uses_imagenet_stem(cfg), impl=cfg.impl)

    def parse(self, value: Any, source: str = "genotype") -> Genotype:
        if isinstance(value, dict):
            return check_genotype(value, source)
        from sldarts.spaces.genotypes import resolve_genotype

        return resolve_genotype(str(value))

    def param_free_ratio(self, genotype: Genotype) -> float:
        return param_free_share([op for cell in ("normal", "reduce") for op, _ in genotype[cell]])

    def eval_network(self, arch: Any, num_classes: int, in_channels: int, *, dataset: str = "cifar10",
                     channels: int | None = None, cells: int | None = None, auxiliary: bool = True,
                     side: int = 0) -> nn.Module:
        imagenet = dataset == "imagenet"
        return DartsNetwork(self.parse(arch), channels or (48 if imagenet else 36), cells or (14 if imagenet else 20),
                            num_classes, auxiliary=auxiliary, imagenet=imagenet or side > 64, in_channels=in_channels)

    def complexity_dataset(self, dataset: str) -> str:
        """DARTS's published settings: C=36/20 cells on CIFAR-size data sets, C=48/14 cells on ImageNet."""
        return dataset if dataset in ("cifar10", "cifar100", "imagenet") else "cifar10"

    def graphs(self, arch: Genotype) -> list[CellGraph]:
        return [darts_graph(arch, c) for c in ("normal", "reduce")]

    def artifacts(self, arch: Genotype) -> dict[str, str]:
        return {"genotype.json": json.dumps(arch, indent=1) + "\n"}

    def labels(self, key: str, rows: int) -> tuple[list[str], list[str] | None]:
        return [f"{i + 2}<-{j}" for i in range(STEPS) for j in range(2 + i)][:rows], list(OPS)

    def rederive(self, weights: dict[str, Tensor], rule: str = "argmax") -> tuple[Genotype, list[Decision]]:
        normal, dn = cell_decisions(weights["normal"], "normal")
        reduce, dr = cell_decisions(weights["reduce"], "reduce")
        return make_genotype(normal, reduce), dn + dr


SPACE = DartsSpace()
