"""Search under a budget: multiply-adds, parameters or measured latency as a term of the search loss.

The cost of an architecture is the cost of the network a user gets (NB201: the benchmark's evaluation
network, what ``sldarts complexity`` counts; a ``Choice`` model: the fixed model), written as

    cost(arch) = base + Σ over decisions of the chosen candidate's cost at its position,

where each candidate is counted alone at the input it sees in that network (MACs and params by the
counter of :mod:`sldarts.evaluate.complexity`, latency timed on ``cost_device``) and ``base`` is the rest
of the network (the whole network of one architecture minus its candidates). For MACs and params this is
exact; for latency it is the look-up-table model of FBNet and ProxylessNAS.

The **expected cost** under α replaces the chosen candidate by the activated weights normalised over each
decision, ``Σ_k w_k c_k / Σ_k w_k``: differentiable in α for every activation, equal to the derived cost
when the weights are one-hot. :class:`CostTerm` adds it to the loss that updates α: ``cost_weight=λ`` adds
``λ · E[cost] / (largest reachable cost)``; ``cost_target=T`` adds ``μ · E[cost] / T`` with a multiplier
``μ ≥ 0`` raised by ``cost_lr · (cost(derived)/T − 1)`` every step (dual ascent on the *derived*
architecture's cost, so μ grows while the derived network is over the target and relaxes while under).

In the parts design of the methods (docs/methods.md), :class:`CostTerm` is a loss part: ``loss(supernet)``
and ``on_epoch(epoch, epochs)``, options in :class:`CostOptions`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from sldarts.budget_options import COST_KINDS, UNITS, CostOptions, check_cost, check_options
from sldarts.errors import SldartsError
from sldarts.methods import Part

__all__ = ["COST_KINDS", "UNITS", "CostModel", "CostOptions", "CostTerm", "budget_line", "check_cost", "check_options",
           "cost_model", "darts_layout", "expected_cost", "nb201_layout", "choice_layout", "trade_off"]

CACHE_ENV = "SLDARTS_CACHE"


# -- counting and timing one module ---------------------------------------------------------------
def count_macs_of(module: nn.Module, inputs: tuple) -> int:
    """Multiply-adds of ``module(*inputs)`` in eval mode: ``FlopCounterMode`` total / 2, the counter of
    ``sldarts complexity``."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*inputs)
    finally:
        module.train(was)
    return int(counter.get_total_flops() // 2)


def count_params_of(module: nn.Module) -> int:
    from sldarts.evaluate.complexity import count_params

    return count_params(module)


def check_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise SldartsError("cost_device=cuda but no CUDA device is visible here; time latency with "
                           "cost_device=cpu or run on a machine with a GPU")
    return torch.device(device)


def device_description(device: str, threads: int, batch: int) -> dict[str, Any]:
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    return {"device": device, "name": name, "threads": threads or torch.get_num_threads(), "batch": batch,
            "torch": torch.__version__}


def time_module(module: nn.Module, inputs: tuple, device: torch.device, repeats: int, threads: int) -> float:
    """Median milliseconds of ``module(*inputs)`` (eval mode, no gradient) over ``repeats`` runs after warm-up."""
    was = module.training
    module.eval()
    old_threads = torch.get_num_threads()
    if device.type == "cpu" and threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    try:
        with torch.no_grad():
            for _ in range(max(2, repeats // 5)):
                module(*inputs)
            sync()
            for _ in range(repeats):
                t0 = time.perf_counter()
                module(*inputs)
                sync()
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(old_threads)
        module.train(was)
    return float(statistics.median(times))


def _shapes(inputs: tuple) -> list:
    return [list(t.shape) if isinstance(t, Tensor) else repr(t) for t in inputs]


def _hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cache_dir(option: str = "") -> Path:
    return Path(option or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sldarts")


class LatencyTable:
    """Timings by (module, input shape) on one device, thread count and batch, kept in a JSON file of the
    cache folder (``latency-<hash of the device>.json``) and reused by every run on the same device."""

    def __init__(self, options: CostOptions) -> None:
        self.o = options
        self.device = check_device(options.cost_device)
        self.desc = device_description(options.cost_device, options.cost_threads, options.cost_batch)
        self.path = cache_dir(options.cost_cache) / f"latency-{_hash(json.dumps(self.desc, sort_keys=True))}.json"
        self.entries: dict[str, float] = {}
        if self.path.exists():
            try:
                self.entries = dict(json.loads(self.path.read_text()).get("entries", {}))
            except (json.JSONDecodeError, OSError, AttributeError):
                self.entries = {}
        self.timed = 0
        self.reused = 0
        self.used: dict[str, float] = {}

    def batched(self, inputs: tuple) -> tuple:
        return tuple(t.new_zeros((self.o.cost_batch, *t.shape[1:])).to(self.device) if isinstance(t, Tensor) else t
                     for t in inputs)

    def ms(self, module: nn.Module, inputs: tuple) -> float:
        inputs = self.batched(inputs)
        key = _hash(repr(module) + json.dumps(_shapes(inputs)))
        if key in self.entries:
            self.reused += key not in self.used
        else:
            self.entries[key] = time_module(copy.deepcopy(module).to(self.device), inputs, self.device,
                                            self.o.cost_repeats, self.o.cost_threads)
            self.timed += 1
        self.used[key] = self.entries[key]
        return self.entries[key]

    def save(self) -> None:
        if not self.timed:
            return
        from sldarts.checkpoint import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"device": self.desc, "entries": self.entries}, indent=1) + "\n")

    def note(self) -> str:
        d = self.desc
        where = f"{d['device']} ({d['name']}, {d['threads']} thread{'s' * (d['threads'] != 1)}, batch {d['batch']})"
        if self.timed == 0:
            return f"latency table: reused {self.reused} entries timed on {where} from {self.path}"
        return (f"latency table: timed {self.timed} entries on {where}"
                + (f", reused {self.reused}" if self.reused else "") + f"; written to {self.path}")


KEEP = 2  # DARTS's edge selection: inputs kept per node


def expected_cost(tables: dict[str, Tensor], base: float, activated: dict[str, Tensor],
                  exclude: dict[str, int | None] | None = None,
                  nodes: dict[str, list[tuple[int, int]]] | None = None) -> Tensor:
    """``base`` + Σ over α keys and rows of the activated weights normalised over the row, ``w / Σ w``,
    times the candidates' costs (rows of ``tables``); ``exclude[key]``: a candidate derivation never picks
    (left out of the normalisation). ``nodes[key]``: row ranges [a, b) of the edges entering one node, of
    which DARTS keeps the 2 whose strongest candidate is largest; each row's cost is then weighted by
    ``min(1, 2 m_i / Σ_node m)``, m_i its strongest weight (1 where a node has only 2 inputs)."""
    total = torch.tensor(base, dtype=torch.float64)
    for k, table in tables.items():
        if k not in activated or not bool(table.any()):
            continue
        w = activated[k].reshape(table.shape)
        x = (exclude or {}).get(k)
        if x is not None:
            w = w * (torch.arange(table.shape[1], device=w.device) != x).to(w)
        p = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        per_row = (p * table.to(p)).sum(-1)
        groups = (nodes or {}).get(k)
        if groups:
            keep = []
            for a, b in groups:
                m = w[a:b].max(-1).values
                keep.append(torch.ones_like(m) if b - a <= KEEP else (KEEP * m / m.sum().clamp_min(1e-12)).clamp(max=1))
            per_row = per_row * torch.cat(keep)
        total = total.to(per_row.device) + per_row.sum()
    return total


# -- the cost model of a space ----------------------------------------------------------------------
@dataclass
class Entry:
    """One candidate at one position: α ``key``, ``row`` and candidate ``k``; counted ``mult`` times."""

    key: str
    row: int
    k: int
    module: nn.Module
    inputs: tuple
    mult: int = 1
    where: str = ""


@dataclass
class Layout:
    """What a space tells the cost model: the α shapes, every candidate at its position, the candidate
    never derived under ``argmax-no-none`` per key, the architecture of a choice of indices and the network
    a user gets for an architecture (with its input)."""

    shapes: dict[str, tuple[int, int]]  # key -> (rows, candidates)
    entries: list[Entry]
    arch_of: Callable[[dict[str, list[int]]], Any]
    network: Callable[[Any], nn.Module]
    sample: tuple[int, ...]  # one input's shape, batch excluded
    exclude: dict[str, int | None]
    names: dict[str, list[str]]
    where: str = ""  # what network the costs are of
    multi: dict[str, int] = field(default_factory=dict)  # key -> n_chosen of an input choice (cost-free rows)
    nodes: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # DARTS: edges into each node
    never: bool = False  # the excluded candidate is never derived, whatever the rule (DARTS's none)
    reference: dict[str, list[int]] | None = None  # the architecture the base is measured on (default: first)


class CostModel:
    """Per-candidate cost tables (one tensor per α key, α's shape) and the base; see the module docstring."""

    def __init__(self, kind: str, layout: Layout, options: CostOptions | None = None) -> None:
        if kind not in COST_KINDS:
            check_cost(kind)
        self.kind, self.layout = kind, layout
        self.options = options or CostOptions(cost=kind)
        self.latency = LatencyTable(self.options) if kind == "latency" else None
        self.tables = {k: torch.zeros(r, n, dtype=torch.float64) for k, (r, n) in layout.shapes.items()}
        self.positions: list[dict[str, Any]] = []
        memo: dict[tuple, float] = {}  # a module at one input is counted once (NB201: the same op on 6 edges)
        for e in layout.entries:
            at = (id(e.module), json.dumps(_shapes(e.inputs)))
            c = memo[at] if at in memo else memo.setdefault(at, self.measure(e.module, e.inputs))
            self.tables[e.key][e.row, e.k] += e.mult * c
            self.positions.append({"key": e.key, "row": e.row, "candidate": layout.names[e.key][e.k],
                                   "where": e.where, "count": e.mult, "cost": c})
        first = layout.reference or {k: [0] * r for k, (r, _) in layout.shapes.items()}
        self.base = self.whole(layout.arch_of(first)) - self.predict(first, with_base=False)
        if self.latency is not None:
            self.latency.save()

    # counting
    def measure(self, module: nn.Module, inputs: tuple) -> float:
        if self.kind == "params":
            return float(count_params_of(module))
        if self.kind == "macs":
            return float(count_macs_of(module, inputs))
        assert self.latency is not None
        return self.latency.ms(module, inputs)

    def whole(self, arch: Any) -> float:
        """The cost of an architecture's network counted (or timed) as a whole."""
        net = self.layout.network(arch).cpu()  # a fixed user model is a copy of one that may be on a GPU
        x = (torch.zeros(1, *self.layout.sample),)
        if self.latency is not None:
            x = self.latency.batched(x)
            return self.latency.ms(net, x)
        return self.measure(net, x)

    # the additive model
    def predict(self, choice: dict[str, list[int]], with_base: bool = True) -> float:
        """Cost of the architecture that picks candidate ``choice[key][row]`` at each row (-1: an edge
        DARTS's edge selection drops)."""
        s = sum(float(self.tables[k][r, i]) for k, idx in choice.items() for r, i in enumerate(idx) if i >= 0)
        return s + (self.base if with_base else 0.0)

    def _excluded(self, rule: str) -> dict[str, int | None]:
        on = rule == "argmax-no-none" or self.layout.never
        return {k: x for k, x in self.layout.exclude.items() if on and x is not None}

    def expected(self, activated: dict[str, Tensor], rule: str = "argmax") -> Tensor:
        """The expected cost under activated α (:func:`expected_cost`), differentiable in α."""
        return expected_cost(self.tables, self.base, activated, self._excluded(rule), self.layout.nodes)

    def _pick(self, scores: dict[str, Tensor], rule: str, low: bool) -> dict[str, list[int]]:
        """Per row the best candidate by ``scores`` (highest, or lowest with ``low``; first on ties), never
        an excluded one; with node groups, only the 2 best rows of each node are kept (the rest -1)."""
        out = {}
        sign = -1.0 if low else 1.0
        for k, table in self.tables.items():
            v = sign * scores[k].detach().reshape(table.shape).double().cpu().clone()
            x = self._excluded(rule).get(k)
            if x is not None:
                v[:, x] = -float("inf")
            best, pick = v.max(-1)
            row = [int(i) for i in pick]
            for a, b in self.layout.nodes.get(k, []):
                order = sorted(range(a, b), key=lambda r: -float(best[r]))
                for r in order[KEEP:]:
                    row[r] = -1
            out[k] = row
        return out

    def choice(self, activated: dict[str, Tensor], rule: str = "argmax") -> dict[str, list[int]]:
        """What derivation picks from activated α (argmax, first on ties; under ``argmax-no-none`` never
        ``none``; DARTS: the 2 inputs of each node whose strongest candidate is largest)."""
        return self._pick(activated, rule, low=False)

    def smallest(self, rule: str = "argmax") -> float:
        """The cost of the cheapest architecture of the space (every decision at its cheapest candidate)."""
        return self.predict(self._pick(self.tables, rule, low=True))

    def largest(self) -> float:
        return self.predict(self._pick(self.tables, "argmax", low=False))

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cost": self.kind, "unit": UNITS[self.kind], "network": self.layout.where,
                               "base": self.base, "tables": {k: t.tolist() for k, t in self.tables.items()},
                               "candidates": self.layout.names, "positions": self.positions}
        if self.latency is not None:
            out["latency"] = {**self.latency.desc, "repeats": self.options.cost_repeats,
                              "cache": str(self.latency.path)}
        return out


def fmt(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind == "latency":
        return f"{value:.3g} ms"
    if value >= 1e6:
        return f"{value / 1e6:.3g}M {UNITS[kind]}"
    return f"{value:,.0f} {UNITS[kind]}"


# -- the loss part ----------------------------------------------------------------------------------
class CostTerm(Part):
    """The cost as a loss part of the method (:mod:`sldarts.methods`): ``loss(supernet)`` (added to the loss
    that updates α) and ``on_epoch``; ``state_dict`` holds the multiplier, so a resumed run continues it
    exactly. Built by the search run once it has the supernet and the data's shape (the cost model counts
    the network the user gets), then appended to the method's parts."""

    name = "cost"
    title = "cost term (search under a budget)"
    Options = CostOptions
    order = 40

    def __init__(self, model: CostModel, options: CostOptions, rule: str = "argmax") -> None:
        super().__init__(options)
        self.model, self.o, self.rule = model, options, rule
        self.multiplier = 0.0
        self.scale = max(model.largest(), 1e-12)
        if options.cost_target:
            low = model.smallest(rule)
            if options.cost_target < low:
                raise SldartsError(
                    f"cost_target={options.cost_target:g} cannot be met: the smallest {options.cost} any "
                    f"architecture of this space reaches is {low:.6g} {UNITS[options.cost]} "
                    f"({model.layout.where}, every decision at its cheapest candidate); raise cost_target")

    @staticmethod
    def activated(supernet: nn.Module) -> dict[str, Tensor]:
        """The deterministic activated α (what derivation reads), with its graph."""
        return {k: supernet.activation(a) for k, a in supernet.arch.items()}

    def derived(self, supernet: nn.Module) -> float:
        with torch.no_grad():
            return self.model.predict(self.model.choice(self.activated(supernet), self.rule))

    def expected(self, supernet: nn.Module) -> Tensor:
        return self.model.expected(self.activated(supernet), self.rule)

    def loss(self, supernet: nn.Module) -> Tensor | None:
        o = self.o
        if o.cost_target:
            if supernet.training:  # dual ascent on the derived architecture's cost, once per step
                over = self.derived(supernet) / o.cost_target - 1.0
                self.multiplier = max(0.0, self.multiplier + o.cost_lr * over)
            if self.multiplier <= 0:
                return None
            return (self.multiplier / o.cost_target * self.expected(supernet)).float()
        if o.cost_weight:
            return (o.cost_weight / self.scale * self.expected(supernet)).float()
        return None

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """Nothing is scheduled by epoch: the multiplier follows the steps."""

    def row(self, supernet: nn.Module) -> dict[str, Any]:
        """Per-epoch numbers for metrics.jsonl."""
        with torch.no_grad():
            out = {"expected_cost": float(self.expected(supernet)), "derived_cost": self.derived(supernet)}
        if self.o.cost_target:
            out["cost_multiplier"] = self.multiplier
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"multiplier": self.multiplier}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.multiplier = float(state["multiplier"])

    def result(self, supernet: nn.Module, arch: Any) -> dict[str, Any]:
        """The honest summary: expected cost under the final α, the derived network's cost counted (timed)
        as a whole next to the table's prediction, the target and whether it was met."""
        m, o = self.model, self.o
        measured = m.whole(arch)
        with torch.no_grad():
            expected = float(self.expected(supernet))
        from_alpha = supernet.derive() if self.rule == "argmax" else supernet.derive(self.rule)
        # the table's cost of the architecture α derives (None where the result is another, e.g. RSPS's pick)
        predicted = self.derived(supernet) if json.dumps(from_alpha) == json.dumps(arch) else None
        out: dict[str, Any] = {"cost": o.cost, "unit": UNITS[o.cost], "network": m.layout.where,
                               "expected": expected, "predicted": predicted, "measured": measured,
                               "target": o.cost_target or None, "weight": o.cost_weight or None,
                               "met": (measured <= o.cost_target) if o.cost_target else None,
                               "smallest": m.smallest(self.rule), "largest": m.largest()}
        if o.cost_target:
            out["multiplier"] = self.multiplier
        if m.latency is not None:
            out["latency"] = {**m.latency.desc, "repeats": o.cost_repeats}
        return out


def budget_line(res: dict[str, Any]) -> str:
    """The end-of-search line of a result's ``budget``."""
    k = res["cost"]
    how = "median of whole-network runs" if k == "latency" else "counted as a whole"
    line = (f"cost ({k}, {res['network']}): derived {fmt(k, res['measured'])} {how} (table "
            f"{fmt(k, res['predicted'])}), expected under the final α {fmt(k, res['expected'])}")
    if res["target"]:
        line += f"; target {fmt(k, res['target'])}: {'met' if res['met'] else 'NOT met'}"
    return line


# -- layouts of the spaces ------------------------------------------------------------------------
def nb201_layout(space: Any, dataset: str) -> Layout:
    """NB201: each edge's op counted alone at each stage of the benchmark's evaluation network on
    ``dataset`` (16, 32, 64 channels at full, half and quarter side), times the 5 cells of a stage."""
    from sldarts.data import DATASETS
    from sldarts.spaces.nb201 import EDGES, OPS, format_arch
    from sldarts.spaces.ops import NB201_OPS

    spec = DATASETS[dataset]
    c0, n = 16, 5
    entries = []
    for s in range(3):
        c, side = c0 * 2 ** s, spec.side // 2 ** s
        for k, name in enumerate(OPS):
            op = NB201_OPS[name](c, 1, True, True)
            for e in range(len(EDGES)):
                entries.append(Entry("cell", e, k, op, (torch.zeros(1, c, side, side),), n,
                                     f"stage {s + 1} ({c} ch, {side}x{side})"))
    return Layout({"cell": (len(EDGES), len(OPS))}, entries,
                  arch_of=lambda idx: format_arch([OPS[i] for i in idx["cell"]]),
                  network=lambda arch: space.eval_network(arch, spec.num_classes, spec.in_channels, dataset=dataset),
                  sample=(spec.in_channels, spec.side, spec.side), exclude={"cell": OPS.index("none")},
                  names={"cell": list(OPS)}, where=f"NB201 evaluation network on {dataset}")


def darts_layout(space: Any, dataset: str) -> Layout:
    """DARTS: each op on each edge of each cell of the published evaluation network on ``dataset`` (C=36,
    20 cells on CIFAR; C=48, 14 cells on ImageNet), counted alone at the shape that edge sees (stride 2 on
    a reduction cell's edges from its inputs); ``none`` is never derived; each node keeps 2 inputs."""
    from sldarts.data import DATASETS
    from sldarts.spaces.darts import OPS, STEPS, make_genotype
    from sldarts.spaces.ops import DARTS_OPS

    spec = DATASETS[dataset]
    groups, a = [], 0
    for i in range(STEPS):
        groups.append((a, a + 2 + i))
        a += 2 + i
    keys = ("normal", "reduce")
    reference = {k: [1 if r - ga < KEEP else -1 for ga, gb in groups for r in range(ga, gb)] for k in keys}

    def arch_of(idx: dict[str, list[int]]) -> Any:
        cells = [[[OPS[idx[k][r]], r - ga] for ga, gb in groups for r in range(ga, gb) if idx[k][r] >= 0]
                 for k in keys]
        return make_genotype(*cells)

    def network(arch: Any) -> nn.Module:
        return space.eval_network(arch, spec.num_classes, spec.in_channels, dataset=dataset)

    sample = (spec.in_channels, spec.side, spec.side)
    net = network(arch_of(reference))
    h = w = spec.side  # shapes by the strides of the stem and of the reduction cells (no forward pass)
    stems = [m for stem in (net.stem0, net.stem1) if stem is not None for m in stem.modules()]
    for m in stems:
        if isinstance(m, nn.Conv2d) and m.stride[0] == 2:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    seen: list[tuple[bool, tuple]] = []
    for cell in net.cells:
        c = next(m for m in cell.pre1.modules() if isinstance(m, nn.Conv2d)).out_channels
        seen.append((cell.reduction, (1, c, h, w)))
        if cell.reduction:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    ops: dict[tuple, nn.Module] = {}
    inputs: dict[tuple, tuple] = {}
    entries = []
    for ci, (red, (_, c, h, w)) in enumerate(seen):
        key = "reduce" if red else "normal"
        for ga, gb in groups:
            for r in range(ga, gb):
                j = r - ga
                stride = 2 if red and j < KEEP else 1
                hi, wi = (h // 2, w // 2) if red and j >= KEEP else (h, w)
                x = inputs.setdefault((c, hi, wi), (torch.zeros(1, c, hi, wi),))
                for k, name in enumerate(OPS):
                    if name == "none":
                        continue
                    if (name, c, stride) not in ops:  # one module per op and shape: counted once
                        ops[(name, c, stride)] = DARTS_OPS[name](c, stride, True, True)
                    entries.append(Entry(key, r, k, ops[(name, c, stride)], x, 1,
                                         f"cell {ci} ({key}, {c} ch, {hi}x{wi})"))
    return Layout({k: (a, len(OPS)) for k in keys}, entries, arch_of=arch_of, network=network, sample=sample,
                  exclude={k: OPS.index("none") for k in keys}, names={k: list(OPS) for k in keys},
                  where=f"DARTS evaluation network on {dataset}", nodes={k: groups for k in keys}, never=True,
                  reference=reference)


def _record_inputs(seen: dict[int, tuple], ident: int, module: nn.Module, args: tuple) -> None:
    if ident not in seen:
        seen[ident] = tuple(a.detach().cpu().clone() if isinstance(a, Tensor) else a for a in args)


def choice_layout(space: Any, supernet: Any, num_classes: int, in_channels: int,
                  sample: tuple[int, ...]) -> Layout:
    """A ``Choice`` model: every candidate counted alone at the input it receives in one forward pass of
    the model on ``sample`` (an input choice's sum costs nothing); the network is the fixed model."""
    from sldarts.nn import Choice, InputChoice, Zero
    from sldarts.spaces.model import _key

    model = supernet.model
    seen: dict[int, tuple] = {}
    hooks = []
    for ms in supernet.groups.values():
        for m in ms:
            if isinstance(m, Choice):
                for cand in m.candidates.values():
                    hooks.append(cand.register_forward_pre_hook(partial(_record_inputs, seen, id(cand))))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *sample, device=next(iter(supernet.arch.values())).device))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    shapes, entries, names, exclude, multi = {}, [], {}, {}, {}
    for label, ms in supernet.groups.items():
        key, first = _key(label), ms[0]
        if isinstance(first, InputChoice):
            shapes[key], names[key], exclude[key] = (1, first.n_inputs), [str(i) for i in range(first.n_inputs)], None
            multi[key] = first.n_chosen
            continue
        shapes[key], names[key] = (1, len(first.candidates)), first.names
        zeros = [k for k, c in enumerate(first.candidates.values()) if isinstance(c, Zero)]
        exclude[key] = zeros[0] if zeros else None
        for m in ms:
            for k, cand in enumerate(m.candidates.values()):
                if isinstance(cand, Zero):
                    continue
                if id(cand) not in seen:
                    raise SldartsError(f"choice {label!r}: candidate {first.names[k]!r} was not called in a forward "
                                       "pass of the model; its cost cannot be counted")
                entries.append(Entry(key, 0, k, cand, seen[id(cand)], 1, label))
    labels = {_key(label): label for label in supernet.groups}

    def arch_of(idx: dict[str, list[int]]) -> dict[str, Any]:
        return {labels[k]: (list(range(multi[k])) if k in multi else names[k][i[0]]) for k, i in idx.items()}

    return Layout(shapes, entries, arch_of=arch_of,
                  network=lambda arch: space.eval_network(arch, num_classes, in_channels),
                  sample=tuple(sample), exclude=exclude, names=names, where="the fixed model", multi=multi)


def cost_model(options: CostOptions, space: Any, supernet: Any, cfg_dataset: str, num_classes: int,
               in_channels: int, sample: tuple[int, ...]) -> CostModel:
    """The cost model of a search: NB201 (at the data set ``sldarts complexity`` counts) or a Choice model."""
    from sldarts.spaces.darts import DartsSpace
    from sldarts.spaces.model import ModelSpace
    from sldarts.spaces.nb201 import NB201Space

    check_cost(options.cost)
    if options.cost == "latency":
        check_device(options.cost_device)
    if isinstance(space, NB201Space):
        layout = nb201_layout(space, space.complexity_dataset(cfg_dataset))
    elif isinstance(space, DartsSpace):
        layout = darts_layout(space, space.complexity_dataset(cfg_dataset))
    elif isinstance(space, ModelSpace):
        layout = choice_layout(space, supernet, num_classes, in_channels, sample)
    else:
        raise SldartsError(f"cost={options.cost} is available on the nb201 and darts spaces and on Choice models; the "
                           f"{space.name} space has no cost model yet")
    return CostModel(options.cost, layout, options)


# -- the trade-off of a sweep ---------------------------------------------------------------------
def predictor(cost_table: dict[str, Any]) -> Callable[[dict[str, list[int]]], float]:
    """The additive cost model of a run's ``cost_table.json``, without counting anything again."""
    tables = {k: torch.tensor(v, dtype=torch.float64) for k, v in cost_table["tables"].items()}
    base = float(cost_table["base"])
    return lambda idx: base + sum(float(tables[k][r, i]) for k, row in idx.items() for r, i in enumerate(row)
                                  if i >= 0)


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """(cost, accuracy, name) points no other point beats on both (lower cost, higher accuracy)."""
    front: list[tuple[float, float, str]] = []
    for c, a, n in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((c, a, n))
    return front


def best_within(front: list[tuple[float, float, str]], cost: float) -> tuple[float, float, str] | None:
    """The most accurate point of the front that costs at most ``cost``."""
    inside = [p for p in front if p[0] <= cost]
    return inside[-1] if inside else None


def trade_off(sweep_dir: Path, runs: list[dict[str, Any]], bench: Any = None, dataset: str = "cifar10",
              split: str = "test") -> str:
    """Accuracy vs cost of a sweep's points with a budget: a Markdown table (``budget.md``) and a plot
    (``budget.png``); with an NB201 benchmark, each point's looked-up accuracy beside the benchmark's own
    Pareto front over every cell (costs from the run's cost table, exact for MACs and params)."""
    from sldarts.spaces import SPACES, get_space
    from sldarts.spaces.nb201 import OPS, parse_arch

    pts = [r for r in runs if r["result"].get("budget")]
    if not pts:
        return ""
    kind = pts[0]["result"]["budget"]["cost"]
    pts = [r for r in pts if r["result"]["budget"]["cost"] == kind]
    front: list[tuple[float, float, str]] = []
    cloud: list[tuple[float, float, str]] = []
    table_file = Path(sweep_dir) / pts[0]["dir"] / "cost_table.json"
    acc_name = "supernet valid acc"
    space = str(pts[0]["result"].get("space"))
    benchmarked = space in SPACES and get_space(space).benchmark  # the space the NB201 table measures
    if bench is not None and benchmarked and table_file.exists():
        predict = predictor(json.loads(table_file.read_text()))
        for arch in bench.archs():
            acc = bench.query(arch)[dataset][split]
            if acc is not None:
                cloud.append((predict({"cell": [OPS.index(o) for o in parse_arch(arch)]}), acc, arch))
        front = pareto(cloud)
        acc_name = f"benchmark {dataset} {split}"
    rows = []
    for r in pts:
        res, b = r["result"], r["result"]["budget"]
        if bench is not None and acc_name.startswith("benchmark"):
            acc = bench.query(res["arch"])[dataset][split]
        else:
            acc = 100.0 * res["valid_acc"] if res.get("valid_acc") is not None else None
        best = best_within(front, b["measured"]) if front else None
        rows.append({"run": r["dir"], "target": b.get("target"), "weight": b.get("weight"), "cost": b["measured"],
                     "expected": b["expected"], "met": b.get("met"), "acc": acc, "best": best,
                     "arch": res.get(res.get("arch_key", "arch"))})
    rows.sort(key=lambda x: x["cost"])
    unit = UNITS[kind]
    head = ["run", f"target ({unit})", f"derived cost ({unit})", f"expected ({unit})", "met", acc_name]
    if front:
        head += ["best benchmark cell at ≤ that cost", "gap"]
    lines = [f"## Accuracy vs {kind}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for x in rows:
        cells = [x["run"], fmt(kind, x["target"]) if x["target"] else "-", fmt(kind, x["cost"]),
                 fmt(kind, x["expected"]), {True: "yes", False: "no", None: "-"}[x["met"]],
                 f"{x['acc']:.2f}" if x["acc"] is not None else "-"]
        if front:
            best = x["best"]
            cells += [f"{best[1]:.2f} ({fmt(kind, best[0])})" if best else "-",
                      f"{best[1] - x['acc']:.2f}" if best and x["acc"] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    if front:
        lines += ["", f"Benchmark Pareto front ({len(cloud)} cells, {len(front)} on the front; costs from the run's "
                  "cost table): " + ", ".join(f"{fmt(kind, c)} → {a:.2f}" for c, a, _ in front)]
    md = "\n".join(lines)
    _plot(Path(sweep_dir) / "budget.png", kind, rows, front, cloud, acc_name)
    (Path(sweep_dir) / "budget.md").write_text(md + "\n")
    return md


def _plot(path: Path, kind: str, rows: list[dict[str, Any]], front: list, cloud: list, acc_name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    scale, unit = (1e6, f"M {UNITS[kind]}") if kind != "latency" else (1.0, "ms")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if cloud:
        ax.scatter([c / scale for c, _, _ in cloud], [a for _, a, _ in cloud], s=2, c="0.8", label="all cells")
        ax.step([c / scale for c, _, _ in front], [a for _, a, _ in front], where="post", c="k", lw=1,
                label="benchmark Pareto front")
    xs = [x["cost"] / scale for x in rows if x["acc"] is not None]
    ys = [x["acc"] for x in rows if x["acc"] is not None]
    ax.scatter(xs, ys, c="tab:red", s=30, zorder=3, label="searched (derived cell)")
    for x in rows:
        if x["target"] and x["acc"] is not None:
            ax.axvline(x["target"] / scale, c="tab:red", lw=0.5, ls=":")
    ax.set_xlabel(f"{kind} ({unit})")
    ax.set_ylabel(f"{acc_name} (%)")
    for x in rows:
        if x["acc"] is not None:
            label = f"T={fmt(kind, x['target'])}" if x["target"] else "no target"
            ax.annotate(label, (x["cost"] / scale, x["acc"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if cloud:
        ax.set_ylim(max(min([a for _, a, _ in front] + [y - 3 for y in ys]) - 5, 0), max(a for _, a, _ in front) + 2)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
