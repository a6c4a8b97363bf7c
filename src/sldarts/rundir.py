"""A run directory: its files, the metrics lines, and the check that a directory holds this run (resume)
or none (a fresh start).

``config.yaml`` (the resolved config), ``metrics.jsonl`` (one JSON line per epoch, plus epoch 0),
``checkpoint.pt``, ``log.txt``, ``result.json`` and a space's artifacts (e.g. ``genotype.json``).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from sldarts.errors import SldartsError

# Keys that may differ between a run and its resumption without changing what it computes (beyond float
# rounding); channels_last also lets runs written before it existed resume.
OPERATIONAL = {"resume", "overwrite", "device", "progress", "workers", "threads", "log_every", "out", "benchmark",
               "logger", "channels_last", "trust",
               "lock_wait"}
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json", "log.txt", "genotype.json",
             "loggers.json", "analysis.jsonl", "split.json", "model.pt2", "cost_table.json")
RUN_DIRS = ("tensorboard", "wandb", "mlruns")  # the dashboards' own files
# lr, amp and nan_policy are what the advice after a non-finite stop names: a resume may change them (the
# change is recorded in history.jsonl); every other key must match
RESUMABLE = {"lr", "amp", "nan_policy"}
MARKER = ".sldarts-run.json"  # written first: the names this run wrote (overwrite=true removes only those)
LOCK = ".sldarts.lock"  # flock'ed by the one process writing the run
HISTORY = "history.jsonl"  # the resumable changes, one line each
OWN = (MARKER, LOCK, *RUN_FILES, HISTORY)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a crash: everything before it is kept
    return rows


def append_line(path: Path, line: str) -> None:
    """Append one JSON line; a full disk is a clear error (the torn line is ignored when read back). A symbolic
    link is never followed out of the run directory."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SldartsError(f"{path} is a symbolic link; sldarts writes only plain files inside its run "
                               "directory: remove the link") from None
        raise SldartsError(f"cannot write {path} ({exc.strerror}); free space and resume=true "
                           "(the last checkpoint is intact)") from None


def read_result(run: Path) -> dict[str, Any]:
    """A finished run's result.json, or one line saying it is damaged."""
    path = Path(run) / "result.json"
    try:
        res = json.loads(path.read_text())
    except FileNotFoundError:
        raise SldartsError(f"{run} has no result.json: the run has not finished; continue it with "
                           "resume=true") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise SldartsError(f"{path} is not valid JSON ({type(exc).__name__}); delete it and resume=true to write "
                           "it again from the last checkpoint") from None
    if not isinstance(res, dict):
        raise SldartsError(f"{path} holds a {type(res).__name__}, not a sldarts result; delete it and resume=true "
                           "to write it again from the last checkpoint")
    return res


# -- what a run directory owns -----------------------------------------------------------------------

def owned(out: Path) -> list[str] | None:
    """The names the run in ``out`` wrote, from its marker; None without a (readable) marker."""
    try:
        data = json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = data.get("files") if isinstance(data, dict) else None
    return [str(f) for f in files] if isinstance(files, list) else None


def claim(out: Path, names: Any) -> None:
    """Add ``names`` (entries of ``out``, written or about to be) to the run's marker."""
    from sldarts.checkpoint import atomic_write_text

    have = owned(out) or [MARKER]
    new = [n for n in names if n not in have]
    if new or not (Path(out) / MARKER).exists():
        atomic_write_text(Path(out) / MARKER, json.dumps({"format": "sldarts-run", "files": have + new}) + "\n")


def _remove_owned(out: Path, names: list[str]) -> None:
    """Delete what the run wrote (the marker last); every other entry of ``out`` stays."""
    for name in names:
        path = out / name
        if name in (MARKER, LOCK) or os.sep in name or name in ("", ".", ".."):
            continue
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir() and owned(path) is not None:  # a run of its own (a P-DARTS stage): what it wrote
            lock_run_dir(path, say=False)  # refused if another process writes it
            try:
                _remove_owned(path, owned(path) or [])
                (path / LOCK).unlink(missing_ok=True)
            finally:
                unlock_run_dir(path)
            if not any(path.iterdir()):
                path.rmdir()
        elif path.is_dir() and name in RUN_DIRS:  # a dashboard's folder, created by the run
            shutil.rmtree(path)
    (out / MARKER).unlink(missing_ok=True)


def _check_fresh(out: Path) -> None:
    """A new run in a directory without a marker: nothing there may carry a name the run writes."""
    if (out / MARKER).exists() or not out.is_dir():
        return
    clash = sorted(n for n in RUN_FILES + (HISTORY,) if (out / n).exists() or (out / n).is_symlink())
    clash += sorted(p.name for p in _figures(out))
    if clash:
        raise SldartsError(f"{out} holds {', '.join(clash[:3])} that sldarts did not write (no {MARKER} marker); "
                           "move them away or use out=DIR for a new run")


def _figures(out: Path) -> list[Path]:
    """The cell drawings a search leaves (cell_<name>.png, .dot): other cell_* files are not the run's."""
    return [*out.glob("cell_*.png"), *out.glob("cell_*.dot")]


def refuse_links(out: Path) -> None:
    """No file a run writes may be a symbolic link (it would be followed out of the run directory)."""
    for path in [*(out / n for n in (*RUN_FILES, HISTORY, *RUN_DIRS)), *_figures(out)]:
        if path.is_symlink():
            raise SldartsError(f"{path} is a symbolic link; sldarts writes only plain files inside its run "
                               "directory: remove the link")


# -- one writer at a time ----------------------------------------------------------------------------

_HELD: dict[str, int] = {}  # run directory -> the descriptor of its flock'ed lock file (this process)


def _holder(path: Path) -> str:
    try:
        text = path.read_text().split()
    except OSError:
        text = []
    return f"pid {text[0]} on {text[1]}" if len(text) >= 2 else "another process"


def lock_run_dir(out: Path, wait: float = 0.0, say: bool = True) -> None:
    """Take the run directory's exclusive lock (``fcntl.flock``) for this process: the kernel releases it
    when the process ends in any way, kill -9 included, so a dead holder never leaves a stale lock. Another
    holder is waited for up to ``wait`` seconds, then named in a one-line refusal."""
    key = str(Path(out).resolve())
    if key in _HELD:
        return
    path = Path(out) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise SldartsError(f"cannot create the lock file {path}: {exc.strerror}") from None
    deadline, told = time.monotonic() + wait, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file as we waited: lock the one there now
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            continue
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise SldartsError(f"cannot lock {path}: {exc.strerror}") from None
        if time.monotonic() >= deadline:
            os.close(fd)
            raise SldartsError(f"run directory {out} is in use by {_holder(path)} (lock {path}); wait for it to "
                               "end, pass lock_wait=SECONDS to wait here, or use out=DIR")
        if not told and say:
            print(f"waiting for {out}: in use by {_holder(path)}", file=sys.stderr, flush=True)
            told = True
        time.sleep(0.1)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
    _HELD[key] = fd


def unlock_run_dir(out: Path, remove: bool = False) -> None:
    """Release the lock (``remove``: and delete its file first, as for a directory that was refused)."""
    fd = _HELD.pop(str(Path(out).resolve()), None)
    if fd is not None:
        if remove:
            (Path(out) / LOCK).unlink(missing_ok=True)
        os.close(fd)  # closing the descriptor releases the flock


def _resumable_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[Any]]:
    return {k: [old.get(k), new.get(k)] for k in sorted(RESUMABLE) if k in old and old.get(k) != new.get(k)}


def record_changes(out: Path, new: dict[str, Any], epoch: int, step: int) -> dict[str, list[Any]]:
    """On resume: the resumable keys that differ from config.yaml, appended to history.jsonl, and config.yaml
    updated to the values that now run. Returns {key: [old, new]}."""
    from sldarts.checkpoint import atomic_write_text

    saved = out / "config.yaml"
    old = yaml.safe_load(saved.read_text()) or {}
    changes = _resumable_diff(old, new)
    if changes:
        claim(out, [HISTORY])
        append_line(out / HISTORY, json.dumps({"epoch": epoch, "step_in_epoch": step, "changes": changes,
                                               "time": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        atomic_write_text(saved, yaml.safe_dump({**old, **{k: v[1] for k, v in changes.items()}}, sort_keys=False))
    return changes


def fresh_name(default: Path) -> Path:
    """Without ``out=``: ``default`` while it holds no run, else the first ``default-N`` (N = 2, 3, ...) that
    holds none, so the same command run twice gives two runs (as Lightning's version_N)."""
    out, n = default, 1
    while (out / "config.yaml").exists():
        n += 1
        out = default.with_name(f"{default.name}-{n}")
    return out


def prepare_run_dir(cfg: Any, default: Path, main: bool = True) -> tuple[Path, bool]:
    """Create or check the run directory, holding its lock. Returns (path, resume requested and allowed).
    Without ``out=`` and without resume/overwrite, a fresh directory (:func:`fresh_name`); an explicit ``out=``
    holding a run is refused unless resume or overwrite is asked for."""
    out = Path(cfg.out) if cfg.out else default
    if not cfg.out and not cfg.resume and not cfg.overwrite:
        out = fresh_name(default)
    try:
        return _prepare(cfg, out, main)
    except SldartsError:  # refused: the directory is left as it was found
        unlock_run_dir(out, remove=main and LOCK not in (owned(out) or []))
        raise


def _prepare(cfg: Any, out: Path, main: bool) -> tuple[Path, bool]:
    if out.exists() and not out.is_dir():
        raise SldartsError(f"out={out} is a file, not a directory")
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SldartsError(f"cannot create run directory {out}: {exc.strerror}") from None
        lock_run_dir(out, getattr(cfg, "lock_wait", 0.0), cfg.progress != "none")
    saved = out / "config.yaml"
    if saved.exists():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = None
        if cfg.overwrite:
            if main:
                names = owned(out)
                if names is None:
                    raise SldartsError(f"{out} has no {MARKER} marker (not written by this sldarts, or not a run): "
                                       "overwrite=true removes only a run's own files; delete what you want gone "
                                       "yourself or use out=DIR")
                _remove_owned(out, names)
                claim(out, OWN)
            return out, False
        if not cfg.resume and owned(out) is None:
            raise SldartsError(f"{out} holds a config.yaml that no sldarts run marked as its own ({MARKER}); use "
                               "out=DIR for a new run, or resume=true if it is a run of an older sldarts")
        if not cfg.resume:
            raise SldartsError(f"run directory {out} already holds a run; pass resume=true to continue it, "
                               "overwrite=true to replace it, or out=DIR for a new one")
        if not isinstance(old, dict):
            raise SldartsError(f"{saved} is not a readable config; pass overwrite=true to start again")
        new = cfg.to_dict()
        # a key an older sldarts did not have ran at its default there
        defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
        diff = sorted(k for k in set(old) | set(new)
                      if k not in OPERATIONAL | RESUMABLE and old.get(k, defaults.get(k)) != new.get(k))
        if diff:
            k = diff[0]
            raise SldartsError(f"run directory {out} holds a different run ({k}={old.get(k)!r} there, "
                               f"{new.get(k)!r} now); use out=DIR for a new run or overwrite=true")
        return out, True
    if main:
        _check_fresh(out)
        claim(out, OWN)
    return out, False
