"""Methods made of parts: a one-shot method is a strategy plus a list of :class:`Part` objects.

The space builds a plain supernet (its edges :class:`~sldarts.spaces.base.MixedOp`, a user model's
:class:`~sldarts.nn.Choice`; both share one mixing core, :mod:`sldarts.mixing`) and knows nothing of
methods. :func:`resolve` turns a config into a :class:`Method` once, when a search starts (before its run
directory is written); :meth:`Method.apply` then adapts the supernet the space built. Every part either
applies to that supernet or refuses it with a one-line :class:`SldartsError` naming the part and the reason,
before the first step: nothing is silently ignored, and options of parts a run does not use are left out of
its ``config.yaml``.

Writing a part (one class; a loss term is the simplest kind)::

    from dataclasses import dataclass, field
    from sldarts.methods import Part

    @dataclass
    class L2Options:
        l2_weight: float = field(default=0.0, metadata={"range": (0, None, False),
                                                        "help": "weight of |α|² in the loss that updates α"})

    class L2(Part):
        name = "l2"                     # how `parts=` and the registry name it
        Options = L2Options             # its options: config keys, validated like every other key
        on = "l2_weight"                # built-in parts: the option that switches it on (non-zero / true)

        def loss(self, model):          # added to the loss that updates α (any number of parts may add one)
            return self.opts.l2_weight * sum((a ** 2).sum() for a in model.arch.values())

A loss term depends on α (and the part's own state) alone, so it adds to α's gradient only, under every
strategy (single-level, first and second order). ``model.arch`` holds α per key; ``model.activation(a)``
gives the activated weights of ``a`` (what FairDARTS's zero-one loss and a cost term read);
``model.arch_weights()`` gives the forward weights (a sample, while training, under Gumbel or Dirichlet).
A cost term (MACs, parameters, latency) is one more loss part written this way.

The hooks of a part, all optional:

- ``adapt(model)``: change the supernet after the space built it (wrap its :class:`Mixing` edges, add
  parameters), or raise :func:`refuse` naming the part and why it cannot apply to this supernet;
- ``sampler``: a part whose ``activation`` maps α to op weights; exactly one per method
  (softmax, sigmoid, gumbel, dirichlet, or a registered one);
- ``loss(model)``: a term added to the loss that updates α, or None;
- ``on_epoch(epoch, epochs)`` / ``on_step(step, steps)``: progress (0-based; ``on_step`` before each step
  with the step in the epoch and the epoch's steps); schedules are functions of it alone, so a resumed run
  continues them exactly (whether α needs batches of its own is the strategy's ``needs_arch_batch``);
- ``weight_step_weights(model)``: op weights the weight step uses instead of the activated α (SDARTS's
  random smoothing), or None; ``updates_alpha()``: False while α is not to be stepped (a warm-up);
- ``fused_ok`` (the fused cells compute it) and ``sparse`` (only the chosen op of an edge is computed);
- ``select(model, valid_batches, seed)``: the final architecture, instead of derivation from α (RSPS, SETN,
  ENAS); ``valid_batches(n)`` gives the first ``n`` validation batches (never test data);
- ``end_epoch(epoch, epochs, model)`` after each finished epoch (``epoch`` = epochs done), and
  ``stop_reason()``: a non-empty string ends the search before its last epoch (DARTS+'s early stopping);
  the search records which part stopped it, why and when;
- ``state_dict()`` / ``load_state_dict(state)``: a part's own state (a controller, a history) saved in every
  checkpoint, so that a resumed search continues exactly. Parts whose state is a function of the epoch need none.

Register a part in :data:`PARTS` (``PARTS.register(MyPart)``), by the ``sldarts.parts`` entry point group, or
name it by import path on the command line: ``parts=my_parts.py:L2 l2_weight=0.1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from torch import Tensor

from sldarts.errors import SldartsError
from sldarts.mixing import Mixing
from sldarts.registry import Registry, is_import_path, load_object, suggest
from sldarts.spaces.base import Supernet


def refuse(part: str, why: str) -> SldartsError:
    """The one-line error of a part that cannot apply to a supernet."""
    return SldartsError(f"{part}: {why}")


@dataclasses.dataclass
class NoOptions:
    """A part without options."""


def config_options(name: str, *keys: str) -> type:
    """A built-in part's options dataclass made of the config keys it reads, so that each is declared once,
    in :class:`sldarts.config.SearchConfig` (default, type, range, help)."""
    from sldarts.config import SearchConfig

    fields = {f.name: f for f in dataclasses.fields(SearchConfig)}
    return dataclasses.make_dataclass(name, [(k, fields[k].type, dataclasses.field(
        default=fields[k].default, metadata=fields[k].metadata)) for k in keys])


class Part:
    """One ingredient of a method; see the module docstring for the hooks."""

    name: ClassVar[str] = "part"
    title: ClassVar[str] = ""  # what it is, for messages: "partial channels (PC-DARTS)"
    Options: ClassVar[type] = NoOptions
    on: ClassVar[str] = ""  # built-in: the option that switches the part on (truthy: on)
    sampler: ClassVar[bool] = False
    fused_ok: ClassVar[bool] = True
    sparse: ClassVar[bool] = False
    order: ClassVar[int] = 50  # adapt order: samplers first (α), then edges, then losses

    def __init__(self, options: Any = None) -> None:
        self.opts = options if options is not None else self.Options()

    @classmethod
    def label(cls) -> str:
        return cls.title or cls.name

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        """Whether the config switches this (built-in) part on."""
        return bool(cls.on) and bool(getattr(cfg, cls.on, False))

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls.Options)]

    @classmethod
    def from_config(cls, cfg: Any, extra: dict[str, Any] | None = None) -> Part:
        """The part with its options read from ``cfg`` (flat keys) or ``extra`` (a plug-in's options)."""
        values = {}
        for name in cls.option_names():
            if extra is not None and name in extra:
                values[name] = extra[name]
            elif hasattr(cfg, name):
                values[name] = getattr(cfg, name)
        opts = cls.Options(**values)
        _validate(opts)
        return cls(opts)

    # -- hooks ------------------------------------------------------------------------------------
    def adapt(self, model: Supernet) -> None:
        """Change the supernet, or raise :func:`refuse`."""

    def loss(self, model: Supernet) -> Tensor | None:
        return None

    def on_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def on_step(self, step: int, steps: int) -> None:
        pass

    def weight_step_weights(self, model: Supernet) -> dict[str, Tensor] | None:
        return None

    def updates_alpha(self) -> bool:
        """Whether this step updates α (False: an α warm-up)."""
        return True

    def end_epoch(self, epoch: int, epochs: int, model: Supernet) -> None:
        """After an epoch's training (``epoch`` epochs are done), before its checkpoint."""

    def stop_reason(self) -> str | None:
        """Why the search ends now (early stopping), or None to go on."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """The part's own state for checkpoints (empty: none, or a function of the epoch alone)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def _validate(opts: Any) -> None:
    """Coerce and check a part's options like config keys (types, choices, ranges)."""
    from sldarts.config import ConfigBase

    ConfigBase.validate(opts)


def mixing_edges(model: Supernet) -> list[Mixing]:
    return [m for m in model.modules() if isinstance(m, Mixing)]


PARTS: Registry[type[Part]] = Registry("part", group="sldarts.parts")


def register(cls: type[Part]) -> type[Part]:
    """Class decorator: put a part in :data:`PARTS`."""
    return PARTS.register(cls)


class Method:
    """A strategy (``optim``/``order``) and its parts, applied once to a supernet."""

    def __init__(self, name: str, optim: str, order: int, parts: list[Part]) -> None:
        samplers = [p for p in parts if p.sampler]
        if len(samplers) != 1:
            raise SldartsError(f"method {name or '(none)'}: needs exactly one sampler part, has "
                               f"{', '.join(p.name for p in samplers) or 'none'}")
        self.name, self.optim, self.order = name, optim, order
        self.parts = sorted(parts, key=lambda p: p.order)
        self.sampler = samplers[0]

    @property
    def part_names(self) -> list[str]:
        return [p.name for p in self.parts]

    @property
    def fused_ok(self) -> bool:
        return all(p.fused_ok for p in self.parts)

    @property
    def sparse(self) -> bool:
        return any(p.sparse for p in self.parts)

    def get(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def apply(self, model: Supernet) -> Supernet:
        for p in self.parts:
            p.adapt(model)
        return model

    def loss(self, model: Supernet) -> Tensor | None:
        terms = [t for t in (p.loss(model) for p in self.parts) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def on_epoch(self, epoch: int, epochs: int) -> None:
        for p in self.parts:
            p.on_epoch(epoch, epochs)

    def on_step(self, step: int, steps: int) -> None:
        for p in self.parts:
            p.on_step(step, steps)

    def updates_alpha(self) -> bool:
        return all(p.updates_alpha() for p in self.parts)

    @property
    def selector(self) -> Part | None:
        """The part that selects the final architecture instead of derivation from α (RSPS), if any."""
        return next((p for p in self.parts if callable(getattr(p, "select", None))), None)

    def weight_step_weights(self, model: Supernet) -> dict[str, Tensor] | None:
        for p in self.parts:
            w = p.weight_step_weights(model)
            if w is not None:
                return w
        return None

    def end_epoch(self, epoch: int, epochs: int, model: Supernet) -> None:
        for p in self.parts:
            p.end_epoch(epoch, epochs, model)

    def stop_reason(self) -> str | None:
        """The first part's reason to end the search now ("part: why"), or None."""
        for p in self.parts:
            why = p.stop_reason()
            if why:
                return f"{p.name}: {why}"
        return None

    @property
    def has_state(self) -> bool:
        """Whether a part keeps state of its own, which checkpoints must then hold."""
        return any(type(p).state_dict is not Part.state_dict for p in self.parts)

    def state_dict(self) -> dict[str, Any]:
        return {p.name: p.state_dict() for p in self.parts if type(p).state_dict is not Part.state_dict}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p in self.parts:
            if type(p).state_dict is not Part.state_dict:
                if p.name not in state:
                    raise KeyError(f"no state of part {p.name}")
                p.load_state_dict(state[p.name])

    def __repr__(self) -> str:
        return f"<method {self.name or 'custom'}: {self.optim}{self.order} + {', '.join(self.part_names)}>"


def _builtins() -> None:
    """Import the built-in part modules (each registers its parts)."""
    import sldarts.methods.betadarts
    import sldarts.methods.dartsminus
    import sldarts.methods.dartsplus
    import sldarts.methods.dropnas
    import sldarts.methods.enas
    import sldarts.methods.fairdarts
    import sldarts.methods.pcdarts
    import sldarts.methods.pdarts
    import sldarts.methods.rsps
    import sldarts.methods.samplers
    import sldarts.methods.sdarts
    import sldarts.methods.setn
    import sldarts.methods.warmup  # noqa: F401


def part_class(spec: str) -> type[Part]:
    """A part by registered name, entry point or import path."""
    _builtins()
    if is_import_path(spec) and spec not in PARTS:
        obj = load_object(spec, "part")
        if not (isinstance(obj, type) and issubclass(obj, Part)):
            raise SldartsError(f"part {spec!r} is a {type(obj).__name__}, not a subclass of sldarts.methods.Part")
        return obj
    if spec not in PARTS:
        raise SldartsError(f"config: parts={spec!r} is not one of {', '.join(PARTS)} nor an import path "
                           "(pkg.module:Part or file.py:Part)" + suggest(spec, PARTS))
    return PARTS.get(spec)


def extra_part_classes(cfg: Any) -> list[type[Part]]:
    names = [s.strip() for s in str(getattr(cfg, "parts", "") or "").split(",") if s.strip()]
    return [part_class(s) for s in names]


def resolve(cfg: Any) -> Method:
    """The method a search configuration describes; refuses, in one line, what would be recorded untruthfully.
    Sets ``cfg.impl`` to the cells that compute every part and records which keys the run does not use."""
    from sldarts.config import METHODS

    _builtins()
    from sldarts.methods.samplers import sampler_for

    builtin = [cls for _, cls in PARTS.items() if cls.on or cls.sampler]
    parts: list[Part] = [sampler_for(cfg.activation).from_config(cfg)]
    parts += [cls.from_config(cfg) for cls in builtin if not cls.sampler and cls.enabled(cfg)]
    extra = extra_part_classes(cfg)
    extra_opts = dict(getattr(cfg, "part_options", None) or {})
    known = {n for cls in extra for n in cls.option_names()}
    for key in extra_opts:
        if key not in known:
            raise SldartsError(f"config: unknown key {key!r}{suggest(key, known)}")
    parts += [cls.from_config(cfg, extra_opts) for cls in extra if cls.name not in {p.name for p in parts}]
    if cfg.method:
        _check_preset(cfg, METHODS[cfg.method], {p.name for p in parts})
    method = Method(cfg.method, cfg.optim, cfg.order, parts)
    used = {p.name for p in parts}
    unused = {n for cls in builtin if cls.name not in used for n in cls.option_names()}
    unused -= {n for p in parts for n in p.option_names()}
    cfg._unused_keys = frozenset(unused)
    # recorded in config.yaml as the cells that run; sync_bn (global-batch batch norm) runs on the reference cells
    if cfg.impl == "fused" and (not method.fused_ok or getattr(cfg, "sync_bn", False)):
        cfg.impl = "reference"
    return method


def _check_preset(cfg: Any, preset: dict[str, Any], used: set[str]) -> None:
    """A preset's defining parts must still be there after explicit keys: ``method=gdas activation=softmax``
    would run first-order DARTS and record it as GDAS."""
    class Preset:
        pass

    p = Preset()
    for k, v in preset.items():
        setattr(p, k, v)
    for _, cls in PARTS.items():
        if cls.on and cls.on in preset and cls.enabled(p) and cls.name not in used:
            raise SldartsError(f"config: method={cfg.method} is made of {cls.label()}, which "
                               f"{cls.on}={getattr(cfg, cls.on)!r} switches off; drop method= (and name the parts "
                               f"you want) or drop {cls.on}=")
    if "activation" in preset and cfg.activation != preset["activation"]:
        raise SldartsError(f"config: method={cfg.method} samples with activation={preset['activation']}; "
                           f"activation={cfg.activation} would run another method recorded as {cfg.method}: drop "
                           "method= or activation=")


def build_supernet(cfg: Any, num_classes: int, in_channels: int, space: Any = None,
                   method: Method | None = None) -> tuple[Supernet, Method]:
    """The space's supernet with ``cfg``'s method applied: (supernet, method)."""
    method = method or resolve(cfg)
    space = space or cfg.search_space()
    return method.apply(space.supernet(cfg, num_classes, in_channels)), method


__all__ = ["Method", "NoOptions", "PARTS", "Part", "build_supernet", "mixing_edges", "refuse", "register",
           "resolve"]
