"""A user's own network as a search space: any ``nn.Module`` with :mod:`sldarts.nn` choices inside.

:class:`ChoiceSupernet` owns the α (one per label, created here, never by the user's model) and hands each
choice its activated weights for one forward pass; :class:`ModelSpace` wraps a model factory
``build(num_classes, in_channels)`` so that every command (search, derive, fix, plot, complexity, retrain)
works on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from sldarts.activations import Activation, Sigmoid
from sldarts.errors import SldartsError
from sldarts.nn import Choice, InputChoice, Zero, choices_of, fix
from sldarts.spaces.base import CellGraph, Decision, SearchSpace, Supernet, top_two

if TYPE_CHECKING:
    from sldarts.config import SearchConfig


def _key(label: str) -> str:
    """A label as a parameter name (no dots in ``nn.ParameterDict`` keys)."""
    return label.replace(".", "/") or "root"


def is_param_free(module: nn.Module) -> bool:
    return next(module.parameters(), None) is None


class ChoiceSupernet(Supernet):
    """Wraps a model with choices; α of each label has shape (candidates,) or (inputs,)."""

    def __init__(self, model: nn.Module, activation: Activation | None = None,
                 alpha_init: float | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise SldartsError(f"the model must be an nn.Module, got {type(model).__name__}")
        found = choices_of(model)
        if not found:
            raise SldartsError(f"model {type(model).__name__} has no sldarts.nn.Choice or InputChoice: nothing to "
                               "search; put a Choice({name: module, ...}) where a decision is to be made")
        self.model = model
        self.activation = activation or Sigmoid()
        self.groups: dict[str, list[Choice | InputChoice]] = {}
        for _, label, m in found:
            first = self.groups.setdefault(label, [m])[0]
            if m is not first:
                if type(m) is not type(first) or _signature(m) != _signature(first):
                    raise SldartsError(f"choices labelled {label!r} differ ({_signature(first)} vs "
                                       f"{_signature(m)}); a shared label needs the same candidates")
                self.groups[label].append(m)
        keys = [_key(label) for label in self.groups]
        if len(set(keys)) != len(keys):
            raise SldartsError("two choice labels differ only by '.' vs '/'; rename one")
        self.arch = nn.ParameterDict({
            _key(label): nn.Parameter(torch.empty(_size(ms[0]))) for label, ms in self.groups.items()})
        self.init_alphas(alpha_init)
        self.set_sparse(self.activation.sparse)

    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None,
                cell_weights: dict[int, Tensor] | None = None) -> Tensor:
        w = weights or self.arch_weights()
        for label, ms in self.groups.items():
            for m in ms:
                m.arch_weights = w[_key(label)]
        try:
            out = self.model(x)
        finally:
            for ms in self.groups.values():
                for m in ms:
                    m.arch_weights = None
        self._check_logits(out, x)
        return out

    num_classes = 0  # set by ModelSpace.supernet: the data's classes, which the logits must match

    def _check_logits(self, out: Any, x: Tensor) -> None:
        logits = out[0] if isinstance(out, (tuple, list)) and out else out
        n = self.num_classes
        if not n or (isinstance(logits, Tensor) and logits.dim() == 2 and logits.shape[1] == n):
            return
        import inspect

        try:
            where = f" ({Path(inspect.getsourcefile(type(self.model)) or '').name}:{type(self.model).__name__})"
        except TypeError:
            where = ""
        got = (f"{logits.shape[1]} logits" if isinstance(logits, Tensor) and logits.dim() == 2
               else f"a {type(logits).__name__}" + (f" of shape {tuple(logits.shape)}" if isinstance(logits, Tensor)
                                                    else ""))
        raise SldartsError(f"your model{where} returns {got} for {n} classes on a batch of shape {tuple(x.shape)}; "
                           f"make it return (batch, {n}) logits: build(num_classes, in_channels) gets num_classes")

    def derive(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> dict[str, Any]:
        """label -> the candidate name with the largest weight (Choice; never a Zero candidate under
        ``argmax-no-none``) or the n_chosen strongest inputs (InputChoice)."""
        w = weights or self._activated()
        out: dict[str, Any] = {}
        for label, (m, *_) in self.groups.items():
            row = w[_key(label)].detach().float().cpu()
            if isinstance(m, Choice):
                out[label] = top_two(row, m.names, self._zero(m, rule))[0]
            else:
                out[label] = sorted(int(i) for i in _ranked(row)[:m.n_chosen])
        return out

    def decisions(self, rule: str = "argmax", weights: dict[str, Tensor] | None = None) -> list[Decision]:
        """Per Choice: winner, runner-up, margin; per InputChoice that drops an input: the last kept input
        against the first dropped one. Choices with one option make no decision."""
        w = weights or self._activated()
        out = []
        for label, (m, *_) in self.groups.items():
            row = w[_key(label)].detach().float().cpu()
            if isinstance(m, Choice):
                win, runner, margin = top_two(row, m.names, self._zero(m, rule))
                if runner:
                    out.append(Decision(label, win, runner, margin))
            elif m.n_chosen < m.n_inputs:
                order = _ranked(row)
                kept, dropped = order[m.n_chosen - 1], order[m.n_chosen]
                out.append(Decision(label, f"input {kept}", f"input {dropped}", float(row[kept] - row[dropped])))
        return out

    def sample_weights(self) -> dict[str, Tensor]:
        """Each Choice a candidate drawn uniformly (one-hot), each InputChoice n_chosen inputs (multi-hot)."""
        out = {}
        for label, (m, *_) in self.groups.items():
            n = _size(m)
            picks = torch.randperm(n)[:m.n_chosen] if isinstance(m, InputChoice) else torch.randint(n, (1,))
            out[_key(label)] = torch.zeros(n).index_fill(0, picks, 1.0).to(self.arch[_key(label)].device)
        return out

    @staticmethod
    def _zero(m: Choice, rule: str) -> int | None:
        """The candidate never derived under ``argmax-no-none``: the Zero (``none``) one, if any."""
        if rule != "argmax-no-none":
            return None
        zeros = [k for k, c in enumerate(m.candidates.values()) if isinstance(c, Zero)]
        return zeros[0] if zeros else None

    def param_free_ratio(self, arch: dict[str, Any]) -> float:
        ops = [(label, arch[label]) for label, (m, *_) in self.groups.items() if isinstance(m, Choice)]
        if not ops:
            return 0.0
        free = sum(is_param_free(self.groups[label][0].candidates[name]) for label, name in ops)
        return free / len(ops)

    def option_names(self) -> dict[str, list[str]]:
        """label -> candidate names (or input indices), for figures and plots."""
        return {label: m.names if isinstance(m, Choice) else [str(i) for i in range(m.n_inputs)]
                for label, (m, *_) in self.groups.items()}


def _ranked(row: Tensor) -> list[int]:
    """Indices by decreasing weight, the lower index first on ties (stable)."""
    return sorted(range(len(row)), key=lambda i: -float(row[i]))


def _size(m: Choice | InputChoice) -> int:
    return len(m.candidates) if isinstance(m, Choice) else m.n_inputs


def _signature(m: Choice | InputChoice) -> str:
    return str(m.names) if isinstance(m, Choice) else f"InputChoice({m.n_inputs}, {m.n_chosen})"


class ModelSpace(SearchSpace):
    """The space of a model factory ``build(num_classes, in_channels) -> nn.Module`` with choices."""

    arch_key = "choices"
    default_lr = 0.025
    default_cells = 0
    default_recipe = "plain"

    def __init__(self, factory: Any, name: str) -> None:
        self.factory, self.name = factory, name
        self._last: ChoiceSupernet | None = None

    def model(self, num_classes: int, in_channels: int) -> nn.Module:
        try:
            model = self.factory(num_classes, in_channels)
        except TypeError as exc:
            raise SldartsError(f"space {self.name!r}: calling it as build(num_classes, in_channels) failed: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if not isinstance(model, nn.Module):
            raise SldartsError(f"space {self.name!r}: build(num_classes, in_channels) returned a "
                               f"{type(model).__name__}, not an nn.Module")
        return model

    def supernet(self, cfg: SearchConfig, num_classes: int, in_channels: int) -> ChoiceSupernet:
        self._last = ChoiceSupernet(self.model(num_classes, in_channels), alpha_init=cfg.alpha_init)
        self._last.num_classes = num_classes
        return self._last

    def parse(self, value: Any, source: str = "choices") -> dict[str, Any]:
        if isinstance(value, str):
            p = Path(value)
            if p.is_dir():
                p = p / "result.json"
            try:
                value = json.loads(p.read_text() if p.is_file() else value)
            except (json.JSONDecodeError, UnicodeDecodeError, OSError):
                raise SldartsError(f"{source}: {str(value)[:80]!r} is neither JSON nor a JSON file") from None
            if isinstance(value, dict) and isinstance(value.get("choices"), dict):
                value = value["choices"]
        if not isinstance(value, dict):
            raise SldartsError(f"{source}: choices are a JSON object label -> candidate name (or input indices)")
        return value

    def _probe(self) -> ChoiceSupernet:
        if self._last is None:
            self._last = ChoiceSupernet(self.model(10, 3))
        return self._last

    def param_free_ratio(self, arch: dict[str, Any]) -> float:
        return self._probe().param_free_ratio(self.parse(arch))

    def eval_network(self, arch: Any, num_classes: int, in_channels: int, *, dataset: str = "cifar10",
                     channels: int | None = None, cells: int | None = None, auxiliary: bool = True,
                     side: int = 0) -> nn.Module:
        return fix(self.model(num_classes, in_channels), self.parse(arch))

    def graphs(self, arch: dict[str, Any]) -> list[CellGraph]:
        """A chain input -> one node per choice -> output, each edge labelled with what was chosen."""
        arch = self.parse(arch)
        labels = list(arch)
        nodes = [("in", "input", "input")] + [(f"c{i}", label, "node") for i, label in enumerate(labels)]
        nodes.append(("out", "output", "output"))
        ids = [n for n, _, _ in nodes]
        edges = [(ids[i], ids[i + 1], _text(arch[labels[i]])) for i in range(len(labels))]
        edges.append((ids[-2], "out", ""))
        return [CellGraph("choices", nodes, edges)]

    def labels(self, key: str, rows: int) -> tuple[list[str], list[str] | None]:
        names = self._probe().option_names().get(key.replace("/", "."))
        return [key], names

    def rederive(self, weights: dict[str, Tensor], rule: str = "argmax") -> tuple[dict[str, Any], list[Decision]]:
        probe = self._probe()
        return probe.derive(rule, weights), probe.decisions(rule, weights)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "inputs " + ",".join(map(str, value))
