"""Named plug-ins (spaces, strategies, activations, data sets) and the import paths that bring your own.

A :class:`Registry` maps a name to an object; :func:`load_object` turns ``package.module:attr`` or
``path/to/file.py:attr`` into the object it names. Config choices are read from the registries, so
adding a plug-in is one class and one registration, never an edit of a list elsewhere.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Generic, TypeVar

from sldarts.errors import SldartsError

T = TypeVar("T")


def suggest(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def is_import_path(text: str) -> bool:
    """``pkg.mod:attr`` or ``file.py:attr`` (a Windows drive letter alone is not one)."""
    mod, sep, attr = str(text).rpartition(":")
    return bool(sep and mod and attr and len(mod) > 1)


def load_object(spec: str, what: str = "object") -> Any:
    """Import ``module:attr`` or ``file.py:attr`` (``attr`` may be dotted); every failure is one line."""
    if not is_import_path(spec):
        raise SldartsError(f"{what} {spec!r} is not an import path: write package.module:name or file.py:name")
    mod_name, _, attr = spec.rpartition(":")
    if mod_name.endswith(".py") or "/" in mod_name:
        path = Path(mod_name).expanduser().resolve()
        if not path.is_file():
            raise SldartsError(f"{what} {spec!r}: file {mod_name} does not exist")
        name = f"sldarts_user_{abs(hash(str(path)))}"
        module = sys.modules.get(name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(name, path)
            assert loader_spec is not None and loader_spec.loader is not None
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[name] = module
            try:
                loader_spec.loader.exec_module(module)
            except SystemExit as exc:  # a script's sys.exit() must not end sldarts silently
                del sys.modules[name]
                raise SldartsError(f"{what} {spec!r}: importing {mod_name} called sys.exit({exc.code!r}); put "
                                   "the script part under if __name__ == '__main__':") from None
            except Exception as exc:
                del sys.modules[name]
                raise SldartsError(f"{what} {spec!r}: importing {mod_name} failed: "
                                   f"{type(exc).__name__}: {_first_line(exc)}") from None
    else:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as exc:
            raise SldartsError(f"{what} {spec!r}: no module named {exc.name!r}; check the path and that the "
                               "package is installed or on PYTHONPATH") from None
        except (Exception, SystemExit) as exc:
            raise SldartsError(f"{what} {spec!r}: importing {mod_name} failed: "
                               f"{type(exc).__name__}: {_first_line(exc)}") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            raise SldartsError(f"{what} {spec!r}: {mod_name} has no attribute {part!r}" + suggest(part, names))
        obj = getattr(obj, part)
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class Registry(Generic[T]):
    """Name -> plug-in. ``group`` names the package entry-point group that third parties register in."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind, self.group = kind, group
        self._items: dict[str, T] = {}
        self._entry_points_read = group is None

    def register(self, obj: T, name: str | None = None) -> T:
        key = name or getattr(obj, "name", None)
        if not key:
            raise ValueError(f"a {self.kind} needs a name to be registered")
        self._items[str(key)] = obj
        return obj

    def decorator(self) -> Callable[[T], T]:
        return lambda obj: self.register(obj)

    def _read_entry_points(self) -> None:
        if self._entry_points_read:
            return
        self._entry_points_read = True
        for ep in entry_points(group=self.group or ""):
            if ep.name not in self._items:
                try:
                    self._items[ep.name] = ep.load()
                except Exception as exc:  # a broken third-party package must not break the built-ins
                    raise SldartsError(f"{self.kind} {ep.name!r} from entry point {ep.value} failed to load: "
                                       f"{type(exc).__name__}: {_first_line(exc)}") from None

    def names(self) -> list[str]:
        self._read_entry_points()
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        self._read_entry_points()
        return list(self._items.items())

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        self._read_entry_points()
        if name in self._items:
            return self._items[name]
        raise SldartsError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._items)}"
                           + suggest(name, self._items))
