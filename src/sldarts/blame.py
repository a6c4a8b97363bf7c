"""The user's mistakes in the user's words: an exception raised inside the user's own code (model forward,
``build()``, data set, ...) becomes one line naming the user's file and function, the shapes and a likely fix,
instead of an "internal error" that asks for a bug report.

Code is the user's when its file lies outside sldarts, the Python installation and its site-packages. An
exception whose innermost frames are sldarts's own (sldarts code called from a user's forward) stays a bug.
"""

from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path
from types import TracebackType

from sldarts.errors import SldartsError

_SLDARTS = str(Path(__file__).resolve().parent) + os.sep


def _library_dirs() -> tuple[str, ...]:
    """The standard library and every site-packages folder (not the whole prefix: /usr/local/app is a user's)."""
    import site

    dirs = {*(sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")),
            *getattr(site, "getsitepackages", list)(), getattr(site, "USER_SITE", "") or ""}
    return tuple(str(Path(d).resolve()) + os.sep for d in dirs if d)


_LIBS = _library_dirs()


def _arg_shape(frame) -> tuple[int, ...] | None:
    import torch

    code = frame.f_code
    for name in code.co_varnames[:code.co_argcount]:
        value = frame.f_locals.get(name)
        if isinstance(value, torch.Tensor):
            return tuple(value.shape)
    return None


def _whose(filename: str) -> str:
    """'sldarts', 'library' or 'user'."""
    if filename.startswith("<"):
        return "library"
    path = str(Path(filename).resolve())
    if path.startswith(_SLDARTS):
        return "sldarts"
    return "library" if path.startswith(_LIBS) else "user"


# sldarts's building blocks that call the user's own modules (a Choice runs the user's candidates)
_PASS_THROUGH = (_SLDARTS + "nn.py", _SLDARTS + "mixing.py")


def user_frame(tb: TracebackType | None) -> tuple[str, str, int, tuple[int, ...] | None] | None:
    """(file, function, line, shape of its first tensor argument) of the innermost user frame, if only
    libraries (or sldarts.nn's choices, which call the user's candidates) ran below it and the exception was
    not raised by sldarts itself."""
    found, last = None, "library"
    while tb is not None:
        code = tb.tb_frame.f_code
        last = who = _whose(code.co_filename)
        if who == "user":
            found = (code.co_filename, getattr(code, "co_qualname", code.co_name), tb.tb_lineno,
                     _arg_shape(tb.tb_frame))
        elif who == "sldarts" and not str(Path(code.co_filename).resolve()).startswith(_PASS_THROUGH):
            found = None  # sldarts code below the user's: not the user's mistake
        tb = tb.tb_next
    return None if last == "sldarts" else found


_HINTS = [
    (re.compile(r"expected input\[([^\]]*)\] to have (\d+) channels, but got (\d+) channels"),
     lambda m: f"the data has {m[3]} channel(s) but the layer expects {m[2]}: build the first layer for the "
               "in_channels sldarts passes to build(num_classes, in_channels)"),
    (re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)"),
     lambda m: f"a Linear layer gets {m[2]} features but expects {m[3]}: check the flattened size for this "
               "input size"),
    (re.compile(r"Expected (\d)D \(unbatched\) or (\d)D \(batched\) input"),
     lambda m: "the layer got an input of the wrong rank: images come as (batch, channels, height, width)"),
    (re.compile(r"Target (-?\d+) is out of bounds"),
     lambda m: f"label {m[1]} is outside the model's classes: make the last layer output num_classes logits"),
]


def hint(message: str) -> str:
    for pattern, text in _HINTS:
        m = pattern.search(message)
        if m:
            return "; " + text(m)
    return ""


def blame(exc: BaseException, shape: tuple[int, ...] | None = None) -> SldartsError | None:
    """A one-line error naming the user's code that raised ``exc``; None when it is not the user's."""
    if isinstance(exc, SldartsError):
        return None
    where = user_frame(exc.__traceback__)
    if where is None:
        return None
    file, func, line, arg = where
    shape = arg or shape
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, SystemExit):
        what = f"called sys.exit({exc.code!r})"
    else:
        what = f"raised {type(exc).__name__}: {first[:200]}"
    on = f" on an input of shape {tuple(shape)}" if shape is not None else ""
    return SldartsError(f"your code {Path(file).name}:{func} (line {line}){on} {what}{hint(first)}")


def reraise(exc: BaseException, shape: tuple[int, ...] | None = None) -> None:
    """Raise the user-worded error for ``exc`` if it came from user code (call in an ``except``)."""
    mine = blame(exc, shape)
    if mine is not None:  # chained: from Python the user's own traceback is still there to read
        raise mine from exc
