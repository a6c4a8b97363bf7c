"""Search spaces: the registry and the one function that turns a config's ``space`` into a space object.

``space=`` is a registered name (``nb201``, ``darts``, or one a package adds through the ``sldarts.spaces``
entry point group) or an import path, ``pkg.mod:obj`` / ``path/to/file.py:obj``, where ``obj`` is a
:class:`SearchSpace` (instance or class) or a model factory ``build(num_classes, in_channels)`` returning
an ``nn.Module`` with :class:`sldarts.nn.Choice` / :class:`sldarts.nn.InputChoice` inside.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

from sldarts.errors import SldartsError
from sldarts.registry import Registry, is_import_path, load_object
from sldarts.spaces.base import CellGraph, SearchSpace, Supernet
from sldarts.spaces.darts import SPACE as DARTS
from sldarts.spaces.nb201 import SPACE as NB201

if TYPE_CHECKING:
    from sldarts.config import SearchConfig

SPACES: Registry[SearchSpace] = Registry("search space", group="sldarts.spaces")
SPACES.register(NB201)
SPACES.register(DARTS)

ARCH_SPACE = NB201.name  # the space of a bare --arch string
GENOTYPE_SPACE = DARTS.name  # the space of --genotype

_loaded: dict[str, SearchSpace] = {}


def as_space(obj: object, spec: str) -> SearchSpace:
    """A SearchSpace instance or class, or a model factory, as a space object."""
    if isinstance(obj, SearchSpace):
        return obj
    if inspect.isclass(obj) and issubclass(obj, SearchSpace):
        return obj()
    if callable(obj) and not inspect.isclass(obj):
        from sldarts.spaces.model import ModelSpace

        return ModelSpace(obj, spec)
    raise SldartsError(f"space {spec!r} is a {type(obj).__name__}, not a SearchSpace or a model factory "
                       "build(num_classes, in_channels) -> nn.Module")


def get_space(name: str) -> SearchSpace:
    """The space a config names (registered name, entry point or import path)."""
    if name.startswith("<"):
        raise SldartsError(f"space {name} was a Python object passed to sldarts.search(model=...); "
                           "continue or use that run from Python with the same model")
    if is_import_path(name) and name not in SPACES:
        if name not in _loaded:
            _loaded[name] = as_space(load_object(name, "space"), name)
        return _loaded[name]
    return as_space(SPACES.get(name), name)


def build_supernet(cfg: SearchConfig, num_classes: int, in_channels: int) -> Supernet:
    """The space's plain supernet, before a method is applied (``sldarts.methods.build_supernet`` applies it)."""
    return get_space(cfg.space).supernet(cfg, num_classes, in_channels)


__all__ = ["ARCH_SPACE", "GENOTYPE_SPACE", "CellGraph", "SPACES", "SearchSpace", "Supernet", "build_supernet",
           "get_space"]
