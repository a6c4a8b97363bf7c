"""Bring your own network: put :class:`Choice` / :class:`InputChoice` anywhere in an ``nn.Module`` and it is
a supernet for every strategy and activation ``sldarts`` has; :func:`fix` turns the searched model into a
plain network with the chosen ops.

The modules hold no α. The search wraps the model (:class:`sldarts.spaces.model.ChoiceSupernet`), creates
one α ``nn.Parameter`` per label and hands each choice its activated weights for the duration of a forward
pass. Outside a search a choice weighs its candidates equally (1/n), so the model still runs.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from sldarts.errors import SldartsError
from sldarts.mixing import Mixing, Zero

__all__ = ["Choice", "InputChoice", "ChosenInputs", "Zero", "fix", "choices_of"]


class Choice(Mixing):
    """A mixed op over named candidates: ``sum_k w_k * candidate_k(x)``. Choices with the same ``label``
    share one decision (one α); each keeps its own candidate weights. A candidate without parameters counts
    as parameter-free (the paper's collapse signal). A :class:`Zero` candidate (the ``none`` op) adds
    exactly nothing, so it is not computed."""

    def __init__(self, candidates: dict[str, nn.Module], label: str | None = None) -> None:
        super().__init__()
        if not isinstance(candidates, dict) or not candidates:
            raise SldartsError("Choice needs a non-empty dict of candidates {name: nn.Module}, got "
                               f"{candidates!r:.60}")
        bad = [k for k, m in candidates.items() if not isinstance(m, nn.Module)]
        if bad:
            raise SldartsError(f"Choice candidate {bad[0]!r} is a {type(candidates[bad[0]]).__name__}, not an "
                               "nn.Module")
        self.candidates = nn.ModuleDict(candidates)
        self.label = label
        self.arch_weights: Tensor | None = None  # set by the search around each forward pass
        self._init_mixing(list(self.candidates.values()))  # the mixing core MixedOp has too

    @property
    def names(self) -> list[str]:
        return list(self.candidates)

    def candidate_modules(self) -> list[nn.Module]:
        return list(self.candidates.values())

    def forward(self, *args, **kwargs) -> Tensor:
        return self.mixed(self.arch_weights, *args, **kwargs)


class InputChoice(nn.Module):
    """Called with a list of ``n_inputs`` tensors, keeps ``n_chosen`` of them (DARTS's edge selection): the
    weighted sum during search, the sum of the chosen ones once fixed."""

    def __init__(self, n_inputs: int, n_chosen: int = 1, label: str | None = None) -> None:
        super().__init__()
        if not (isinstance(n_inputs, int) and isinstance(n_chosen, int) and 1 <= n_chosen <= n_inputs):
            raise SldartsError(f"InputChoice needs 1 <= n_chosen <= n_inputs, got n_inputs={n_inputs!r} "
                               f"n_chosen={n_chosen!r}")
        self.n_inputs, self.n_chosen, self.label = n_inputs, n_chosen, label
        self.arch_weights: Tensor | None = None

    def forward(self, inputs: list[Tensor]) -> Tensor:
        if len(inputs) != self.n_inputs:
            raise SldartsError(f"InputChoice {self.label or ''} expects {self.n_inputs} inputs, got {len(inputs)}")
        w = self.arch_weights
        out = None
        for k, x in enumerate(inputs):
            y = x * (self.n_chosen / self.n_inputs) if w is None else w[k] * x
            out = y if out is None else out + y
        assert out is not None
        return out


class ChosenInputs(nn.Module):
    """A fixed :class:`InputChoice`: the sum of the chosen inputs (TorchScript-able)."""

    def __init__(self, indices: list[int]) -> None:
        super().__init__()
        self.indices = [int(i) for i in indices]

    def forward(self, inputs: list[Tensor]) -> Tensor:
        out = inputs[self.indices[0]]
        for i in self.indices[1:]:
            out = out + inputs[i]
        return out


def choices_of(model: nn.Module) -> list[tuple[str, str, Choice | InputChoice]]:
    """(module path, label, module) of every choice, outermost first; the label defaults to the path."""
    return [(name, m.label or name, m) for name, m in model.named_modules() if isinstance(m, (Choice, InputChoice))]


def _chosen(m: Choice | InputChoice, label: str, value: object) -> nn.Module:
    if isinstance(m, Choice):
        if value not in m.candidates:
            raise SldartsError(f"choice {label!r}: {value!r} is not a candidate; candidates are "
                               f"{', '.join(m.candidates)}")
        return m.candidates[str(value)]
    if (not isinstance(value, (list, tuple)) or len(value) != m.n_chosen
            or not all(isinstance(i, int) and 0 <= i < m.n_inputs for i in value)):
        raise SldartsError(f"input choice {label!r}: {value!r} must be a list of {m.n_chosen} input indices "
                           f"in 0..{m.n_inputs - 1}")
    return ChosenInputs(list(value))


def _reset(module: nn.Module) -> None:
    for m in module.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def fix(model: nn.Module, choices: dict[str, object], reset: bool = False) -> nn.Module:
    """A copy of ``model`` with every choice replaced by what ``choices`` (label -> candidate name, or
    input indices) picks: the candidate module itself, with its weights (re-initialised with
    ``reset=True``). The result holds no α and needs no ``sldarts`` state to run."""
    if not isinstance(choices, dict):
        raise SldartsError(f"fix needs a dict label -> choice (a search result's 'choices'), got "
                           f"{type(choices).__name__}")
    model = copy.deepcopy(model)
    if isinstance(model, (Choice, InputChoice)):
        name, label, m = choices_of(model)[0]
        return _fix_one(m, label, choices, reset)
    while True:
        found = choices_of(model)
        if not found:
            return model
        name, label, m = found[0]
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, _fix_one(m, label, choices, reset))


def _fix_one(m: Choice | InputChoice, label: str, choices: dict[str, object], reset: bool) -> nn.Module:
    if label not in choices:
        raise SldartsError(f"choices has no entry for {label!r}; it has {', '.join(map(str, choices)) or 'none'}")
    new = _chosen(m, label, choices[label])
    if reset:
        _reset(new)
    return new
