"""The two contracts of a search space, declared in one place.

- :class:`SearchSpace`: what every *command* needs (supernet, derivation's format, validation, the
  parameter-free ratio, the evaluation network, the drawing, the defaults). Built-in spaces and user
  spaces are instances registered in :data:`sldarts.spaces.SPACES`; nothing outside a space's module
  branches on its name.
- :class:`Supernet`: what the *search* needs (weights vs α, activated weights, derivation) and, optionally,
  the analysis hooks. Strategies and the run loop use only this interface, never a space's internals.

An optional capability a space lacks raises one line naming it (:func:`unsupported`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sldarts.activations import Activation
from sldarts.errors import SldartsError
from sldarts.mixing import Mixing
from sldarts.mixing import channel_shuffle as channel_shuffle  # re-exported
from sldarts.spaces.ops import PARAM_FREE

if TYPE_CHECKING:
    from sldarts.config import SearchConfig


def unsupported(space: str, what: str, method: str) -> SldartsError:
    return SldartsError(f"the {space} search space has no {what}; its SearchSpace must implement {method}() "
                        "for this command")


DERIVE_RULES = ("argmax", "argmax-no-none")  # `derive=`: the paper's rule, or never `none`


@dataclass(frozen=True)
class Decision:
    """One choice derivation makes: the winner, the runner-up, and the margin between their activated
    weights (for DARTS's edge selection: between the last kept and the first dropped edge)."""

    name: str
    winner: str
    runner_up: str
    margin: float


def top_two(row: Tensor, names: list[str] | tuple[str, ...], exclude: int | None = None
            ) -> tuple[str, str, float]:
    """(winner, runner-up, margin) of one row of activated weights; ``exclude`` an op index never chosen.
    The winner is ``argmax`` (first on ties), as derivation picks it."""
    w = row.detach().float().cpu().clone()
    if exclude is not None:
        w[exclude] = -float("inf")
    k = int(w.argmax())
    if len(w) - (exclude is not None) < 2:
        return names[k], "", float("inf")
    rest = w.clone()
    rest[k] = -float("inf")
    r = int(rest.argmax())
    return names[k], names[r], float(w[k] - w[r])


@dataclass
class CellGraph:
    """A drawing of a derived architecture: nodes (id, label, kind: input|node|output) and edges
    (src, dst, op label or '')."""

    name: str
    nodes: list[tuple[str, str, str]]
    edges: list[tuple[str, str, str]]


class MixedOp(Mixing):
    """One edge of the supernet: the weighted sum of every candidate op (:class:`Mixing`).

    ``none`` contributes exactly zero, so no tensor is built for it; its weight still matters
    for softmax through the normalisation, which the activation already applied. ``make(c)`` builds the
    candidates for ``c`` input channels (what partial channels needs to rebuild them narrower).
    """

    def __init__(self, ops: dict[str, nn.Module], stride: int = 1, channels: int | None = None,
                 make: Callable[[int], dict[str, nn.Module]] | None = None) -> None:
        super().__init__()
        self.names = list(ops)
        self.ops = nn.ModuleList(ops.values())
        self.stride, self.channels, self.make = stride, channels, make
        self._init_mixing(list(self.ops))

    def candidate_modules(self) -> list[nn.Module]:
        return list(self.ops)

    def set_candidates(self, candidates: dict[str, nn.Module]) -> None:
        assert list(candidates) == self.names, "the same candidates, by name and order"
        self.ops = nn.ModuleList(candidates.values())

    def forward(self, x: Tensor, weights: Tensor) -> Tensor:
        return self.mixed(weights, x)


class Supernet(nn.Module, ABC):
    """Base class. Subclasses put α in ``self.arch`` (an ``nn.ParameterDict``; one entry per decision
    group, activated over its last dimension) and define ``forward``, ``derive`` and ``param_free_ratio``."""

    arch: nn.ParameterDict
    activation: Activation
    op_names: tuple[str, ...] = ()

    @abstractmethod
    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None,
                cell_weights: dict[int, Tensor] | None = None) -> Tensor:
        """Logits. ``weights`` replaces the activated α (e.g. one-hot); ``cell_weights`` gives the c-th
        search cell its own tensor (the analysis takes dL/dp of one cell)."""

    @abstractmethod
    def derive(self, rule: str = "argmax") -> Any:
        """The discrete architecture the current α choose (JSON-serialisable); ``rule`` in DERIVE_RULES."""

    def decisions(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> list[Decision]:
        """Every choice derivation makes from the activated α (or from ``weights``), with its margin."""
        raise unsupported(type(self).__name__, "decision margins", "decisions")

    @abstractmethod
    def param_free_ratio(self, arch: Any) -> float:
        """Share of parameter-free ops in a derived architecture (the paper's collapse signal)."""

    # -- optional analysis hooks (analysis=true) ----------------------------------------------
    def search_cells(self) -> list[tuple[nn.Module, str]]:
        """The search cells in order, each with the α key it uses."""
        raise unsupported(type(self).__name__, "analysis hooks", "search_cells")

    def op_params(self, cell: nn.Module) -> dict[tuple[int, str], list[tuple[nn.Parameter, slice]]]:
        """Parameters W_i of each (edge, op) of a cell, as (tensor, slice of its first dim)."""
        raise unsupported(type(self).__name__, "analysis hooks", "op_params")

    def edge_nodes(self) -> list[tuple[int, int]]:
        """(to, from) node of each α row."""
        raise unsupported(type(self).__name__, "analysis hooks", "edge_nodes")

    # -- shared machinery ---------------------------------------------------------------------
    @property
    def edge_betas(self) -> nn.ParameterDict | None:
        """PC-DARTS's edge normalisation β, per α key (registered as the submodule ``edge_betas``)."""
        return self._modules.get("edge_betas")  # type: ignore[return-value]

    def named_alphas(self) -> dict[str, nn.Parameter]:
        """Architecture parameters by their names in ``state_dict`` (what ``functional_call`` takes)."""
        out = {f"arch.{k}": a for k, a in self.arch.items()}
        if self.edge_betas is not None:
            out.update({f"edge_betas.{k}": b for k, b in self.edge_betas.items()})
        return out

    def alphas(self) -> list[nn.Parameter]:
        """The architecture parameters, α and (edge_norm) β: module parameters, so DDP averages them too."""
        return list(self.named_alphas().values())

    # -- where method parts (sldarts.methods) hook in -------------------------------------------
    def set_sparse(self, flag: bool) -> None:
        """One-hot forward weights (GDAS, RSPS): every mixed op computes only its chosen op."""
        for m in self.modules():
            if hasattr(m, "hard"):
                m.hard = flag

    def edge_factors(self, key: str) -> Tensor | None:
        """Edge normalisation (PC-DARTS): per edge, softmax of β over the edges entering the same node."""
        if self.edge_betas is None:
            return None
        beta = self.edge_betas[key]
        return torch.cat([torch.softmax(beta[a:b], 0) for a, b in self.node_groups()])

    def node_groups(self) -> list[tuple[int, int]]:
        """[start, end) of the α rows of the edges entering each node (edge normalisation)."""
        raise unsupported(type(self).__name__, "edge normalisation", "node_groups")

    def sample_weights(self) -> dict[str, Tensor]:
        """One uniformly sampled architecture as one-hot weights per α key (RSPS), from torch's RNG."""
        raise unsupported(type(self).__name__, "uniform architecture sampling (RSPS)", "sample_weights")

    def weights(self) -> list[nn.Parameter]:
        """Every parameter that is not α: the only ones the weight optimiser ever sees."""
        ids = {id(a) for a in self.alphas()}
        return [p for p in self.parameters() if id(p) not in ids]

    def named_weights(self) -> Iterator[tuple[str, nn.Parameter]]:
        ids = {id(a) for a in self.alphas()}
        return ((n, p) for n, p in self.named_parameters() if id(p) not in ids)

    def arch_weights(self) -> dict[str, Tensor]:
        """What the forward pass multiplies each op by, per α key: the activated α, or a sample of it while
        training (GDAS, DrNAS)."""
        return {name: self.activation.forward_weights(a, self.training) for name, a in self.arch.items()}

    @torch.no_grad()
    def _activated(self) -> dict[str, Tensor]:
        """Activated α without a graph, for derivation and metrics; edge-normalised where β exist."""
        out = {}
        for k, a in self.arch.items():
            w = self.activation(a).detach()
            f = self.edge_factors(k) if self.edge_betas is not None and w.dim() == 2 else None
            out[k] = w if f is None else w * f.detach()[:, None]
        return out

    def init_alphas(self, value: float | None = None) -> None:
        """α's start value from the activation. The global RNG state before the draw is kept, so that the
        method's sampler (:mod:`sldarts.methods`) draws α again from the very same stream."""
        self._alpha_rng = torch.get_rng_state()
        for a in self.arch.values():
            self.activation.init_(a, value)
        for b in (self.edge_betas or {}).values():
            with torch.no_grad():
                b.normal_(0.0, 1e-3)  # PC-DARTS: β ~ N(0, 1e-3²)

    def alpha_state(self) -> dict[str, Any]:
        """Raw and activated α (and β) as plain lists, for metrics.jsonl."""
        with torch.no_grad():
            out = {
                "alphas": {k: v.detach().cpu().tolist() for k, v in self.arch.items()},
                "weights": {k: v.cpu().tolist() for k, v in self._activated().items()},
            }
            if self.edge_betas is not None:
                out["betas"] = {k: v.detach().cpu().tolist() for k, v in self.edge_betas.items()}
            return out



def param_free_share(ops: list[str]) -> float:
    return sum(op in PARAM_FREE for op in ops) / max(len(ops), 1)


class SearchSpace(ABC):
    """Everything the commands need from a search space; register an instance in ``SPACES`` (or name it
    by import path, ``space=pkg.mod:obj``, or by the ``sldarts.spaces`` entry point group)."""

    name: str = "space"
    arch_key: str = "arch"  # the derived architecture's key in metrics.jsonl and result.json
    default_lr: float = 0.025  # weight learning rate when the config gives none
    default_cells: int = 8  # `cells` when the config gives 0
    default_recipe: str = "plain"  # retraining recipe when none is named
    benchmark: bool = False  # derived architectures can be looked up in NAS-Bench-201
    impls: tuple[str, ...] = ()  # `impl` values the supernet takes (reference first), compared by the bench
    # the data set its papers transfer a searched cell to and size it on (DARTS: ImageNet, C=48, 14 cells);
    # `sldarts report` counts each derived cell there, beside the papers' columns
    transfer_dataset: str | None = None

    @abstractmethod
    def supernet(self, cfg: SearchConfig, num_classes: int, in_channels: int) -> Supernet:
        """The weight-sharing network for a search configuration."""

    @abstractmethod
    def parse(self, value: Any, source: str = "architecture") -> Any:
        """Validate and normalise an architecture given as the object, its text or a file; one-line errors."""

    @abstractmethod
    def param_free_ratio(self, arch: Any) -> float:
        """Share of parameter-free ops in an architecture."""

    def format(self, arch: Any) -> str:
        """One line of text for printing (``sldarts derive``)."""
        return arch if isinstance(arch, str) else json.dumps(arch)

    def num_cells(self, cells: int) -> int:
        return cells or self.default_cells

    def eval_network(self, arch: Any, num_classes: int, in_channels: int, *, dataset: str = "cifar10",
                     channels: int | None = None, cells: int | None = None, auxiliary: bool = True,
                     side: int = 0) -> nn.Module:
        """The network retrained and counted for a derived architecture (``forward`` -> logits, or
        ``(logits, aux)``); ``side``: the input's side where known, for the stem."""
        raise unsupported(self.name, "evaluation network", "eval_network")

    def complexity_dataset(self, dataset: str) -> str | None:
        """The data set whose evaluation network is counted at the end of a search on ``dataset``; None:
        count it at the searched data's own shape."""
        return None

    def graphs(self, arch: Any) -> list[CellGraph]:
        """What ``sldarts plot`` draws: one graph per cell type."""
        raise unsupported(self.name, "cell drawing", "graphs")

    def artifacts(self, arch: Any) -> dict[str, str]:
        """Extra files of a finished search (name -> text), e.g. DARTS's genotype.json."""
        return {}

    def rederive(self, weights: dict[str, Tensor], rule: str = "argmax") -> tuple[Any, list[Decision]]:
        """(architecture, decisions) from recorded activated weights (a metrics line), without the model:
        ``sldarts derive RUN --derive RULE`` re-derives a finished run this way."""
        raise unsupported(self.name, "re-derivation from recorded weights", "rederive")

    def labels(self, key: str, rows: int) -> tuple[list[str], list[str] | None]:
        """(row labels, op names) of the α entry ``key``, for figures; op names None if they differ by row."""
        return [str(i) for i in range(rows)], None

    def __repr__(self) -> str:
        return f"<search space {self.name}>"


def stem_side(cfg: Any) -> int:
    """The input side a built-in space fits its stem to: the searched images' (set by the run once its data
    is read), else ``image_size`` (0: unknown)."""
    return int(getattr(cfg, "input_side", 0) or getattr(cfg, "image_size", 0) or 0)


def eval_network_for(space: SearchSpace, arch: Any, num_classes: int, in_channels: int, side: int = 0,
                     **kw: Any) -> nn.Module:
    """``space.eval_network`` with the input's side for the built-in spaces' stems (a space of one's own
    written without ``side`` is called without it)."""
    import inspect

    if side and "side" in inspect.signature(space.eval_network).parameters:
        kw["side"] = side
    return space.eval_network(arch, num_classes, in_channels, **kw)
