"""Crash-safe checkpoints: tensors and plain containers only, written atomically.

The file is written to a temporary name, fsynced and renamed over the old one, so a kill at any
moment leaves either the previous complete checkpoint or the new complete one, never half of one.
Loading uses ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch

from sldarts.errors import SldartsError

FORMAT = "sldarts-checkpoint"
VERSION = 1


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise SldartsError(f"disk full while writing {path}; free space and resume (the previous "
                               "file is intact)") from None
        raise SldartsError(f"cannot write {path}: {exc.strerror}") from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save(path: Path, kind: str, state: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, **state}
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load(path: Path, kind: str) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SldartsError(f"no checkpoint at {path}") from None
    except Exception as exc:
        raise SldartsError(f"checkpoint {path} is corrupt or not a sldarts checkpoint "
                           f"({type(exc).__name__}); restart with overwrite=true") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise SldartsError(f"{path} is not a sldarts checkpoint; restart with overwrite=true")
    if state.get("kind") != kind:
        raise SldartsError(f"{path} is a {state.get('kind')} checkpoint, not a {kind} one")
    return state


def rng_state() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        try:
            torch.cuda.set_rng_state_all(state["cuda"])
        except (RuntimeError, IndexError):
            pass  # a different number of GPUs: the CUDA RNG is not used by the search itself
