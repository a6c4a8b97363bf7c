"""The epoch loop shared by search and retraining: run directory, checkpoints and exact resume,
metrics, progress, graceful stop, non-finite checks, rank-0 I/O.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one line per epoch, plus epoch 0 before any
step), ``checkpoint.pt`` (after every epoch, and at a graceful stop), ``log.txt`` and at the end
``result.json``. Subclasses say what a step is and what to measure; they never touch files.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from sldarts import checkpoint as ckpt
from sldarts.distributed import all_sum, barrier, broadcast_buffers, setup
from sldarts.errors import SldartsError
from sldarts.progress import Progress

# Keys that may differ between a run and its resumption without changing what it computes (beyond float
# rounding); channels_last also lets runs written before it existed resume.
OPERATIONAL = {"resume", "overwrite", "device", "progress", "workers", "threads", "log_every", "out", "benchmark",
               "channels_last"}
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json", "log.txt", "genotype.json")


class Stop(Exception):
    """Raised inside the loop after a graceful stop's checkpoint is written."""


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
    """Append one JSON line; a full disk is a clear error (the torn line is ignored when read back)."""
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
    except OSError as exc:
        raise SldartsError(f"cannot write {path} ({exc.strerror}); free space and resume=true "
                           "(the last checkpoint is intact)") from None


def prepare_run_dir(cfg: Any, default: Path, main: bool = True) -> tuple[Path, bool]:
    """Create or check the run directory. Returns (path, resume requested and allowed)."""
    out = Path(cfg.out) if cfg.out else default
    saved = out / "config.yaml"
    if saved.exists():
        try:
            old = yaml.safe_load(saved.read_text()) or {}
        except yaml.YAMLError:
            old = None
        if cfg.overwrite:
            if main:
                for name in RUN_FILES:
                    (out / name).unlink(missing_ok=True)
                for extra in out.glob("cell*"):
                    extra.unlink() if extra.is_file() else shutil.rmtree(extra)
            return out, False
        if not cfg.resume:
            raise SldartsError(f"run directory {out} already holds a run; pass resume=true to continue it, "
                               "overwrite=true to replace it, or out=DIR for a new one")
        if not isinstance(old, dict):
            raise SldartsError(f"{saved} is not a readable config; pass overwrite=true to start again")
        new = cfg.to_dict()
        diff = sorted(k for k in set(old) | set(new) if k not in OPERATIONAL and old.get(k) != new.get(k))
        if diff:
            k = diff[0]
            raise SldartsError(f"run directory {out} holds a different run ({k}={old.get(k)!r} there, "
                               f"{new.get(k)!r} now); use out=DIR for a new run or overwrite=true")
        return out, True
    if out.exists() and not out.is_dir():
        raise SldartsError(f"out={out} is a file, not a directory")
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SldartsError(f"cannot create run directory {out}: {exc.strerror}") from None
    return out, False


class EpochRun:
    """One training run of ``cfg.epochs`` epochs. ``run()`` returns the result dict (also result.json).

    Subclasses implement :meth:`build` (data, model, optimisers, ``self.sched``), :meth:`stateful`,
    :meth:`begin_epoch`, :meth:`train_step`, :meth:`measure` and :meth:`result`.
    """

    kind = "run"
    train_loader: Any
    sched: Any
    model: torch.nn.Module

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.dist, self.device = setup(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.out, resuming = prepare_run_dir(cfg, self.default_dir(), self.dist.main)
        barrier()
        self.progress = Progress(cfg.progress, cfg.log_every, self.out / "log.txt", enabled=self.dist.main)
        torch.manual_seed(cfg.seed)
        self.build()
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed within the current epoch (graceful stop)
        self.partial = self._zero()
        self._stop_signal: int | None = None
        self._agreed_stop = False  # the ranks' common decision (torchrun)
        self.skipped_steps = 0  # non-finite batches dropped in the last epoch (nan_policy=skip)
        self.resuming = resuming and (self.out / "checkpoint.pt").exists()
        if self.resuming:
            self._load()

    # -- the subclass's part -----------------------------------------------------------------
    def default_dir(self) -> Path:
        raise NotImplementedError

    def build(self) -> None:
        raise NotImplementedError

    def stateful(self) -> dict[str, Any]:
        """Objects with state_dict/load_state_dict that a checkpoint must hold."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} for {self.cfg.epochs} epochs on {self.device}"

    def begin_epoch(self, global_step: int) -> None:
        """Called before the first step of an epoch (or of its resumed remainder)."""

    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        raise NotImplementedError

    def lr(self) -> float:
        return float(self.sched.get_last_lr()[0])

    def measure(self) -> dict[str, Any]:
        """Per-epoch numbers beyond the training loss (validation accuracy, architecture, ...)."""
        return {}

    def summary_line(self, row: dict[str, Any]) -> str:
        return ""

    def result(self, seconds: float, last: dict[str, Any] | None) -> dict[str, Any]:
        raise NotImplementedError

    def artifacts(self, result: dict[str, Any]) -> dict[str, str]:
        """Extra text files to write next to result.json (name -> content)."""
        return {}

    def on_finish(self, result: dict[str, Any]) -> None:
        """Rank 0, after result.json: optional extras (figures) whose failure must not fail the run."""

    # -- checkpointing ----------------------------------------------------------------------
    @staticmethod
    def _zero() -> dict[str, float]:
        return {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0, "skipped": 0.0}

    def _save(self) -> None:
        if self.dist.main:
            state = {name: obj.state_dict() for name, obj in self.stateful().items()}
            state.update(epoch=self.epoch, step_in_epoch=self.step_in_epoch, partial=dict(self.partial),
                         rng=ckpt.rng_state(), world=self.dist.world)
            ckpt.save(self.out / "checkpoint.pt", self.kind, state)
        barrier()

    def _load(self) -> None:
        path = self.out / "checkpoint.pt"
        st = ckpt.load(path, self.kind)
        try:
            for name, obj in self.stateful().items():
                obj.load_state_dict(st[name])
            self.epoch, self.step_in_epoch = int(st["epoch"]), int(st["step_in_epoch"])
            self.partial = {k: float(v) for k, v in st["partial"].items()}
            ckpt.set_rng_state(st["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise SldartsError(f"checkpoint {path} does not fit this run "
                               f"({str(exc).splitlines()[0][:120]}); use overwrite=true") from None
        if self.dist.main:  # drop metric lines newer than the checkpoint (crash between the two writes)
            rows = [r for r in read_metrics(self.out / "metrics.jsonl") if r["epoch"] <= self.epoch]
            ckpt.atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # -- the loop ---------------------------------------------------------------------------
    def _record(self, epoch: int, train_loss: float | None, train_acc: float | None, seconds: float,
                lr: float) -> dict:
        t0 = time.time()
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": train_loss, "train_acc": train_acc}
        row.update(self.measure())
        if self.skipped_steps:
            row["skipped_steps"] = self.skipped_steps
        row.update(seconds=round(seconds, 3), eval_seconds=round(time.time() - t0, 3))
        if self.dist.main:
            append_line(self.out / "metrics.jsonl", json.dumps(row))
        return row

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def _install_signals(self) -> dict:
        old = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return old

    def _stop_requested(self, k: int, steps: int) -> bool:
        """Whether to stop after step k. Under torchrun all ranks must stop at the same step, so they
        agree (an all-reduce of the flag) at the progress points only, keeping the step itself sync-free."""
        if self.dist.world == 1:
            return self._stop_signal is not None
        if not (self.progress.wants(k) or k == steps):
            return False
        flag = torch.tensor([0.0 if self._stop_signal is None else 1.0], device=self.device)
        (flag,) = all_sum(flag)
        self._agreed_stop = bool(flag.item() > 0)
        if self._agreed_stop and self._stop_signal is None:
            self._stop_signal = signal.SIGTERM
        return self._agreed_stop

    def check_finite(self, loss_sum: torch.Tensor | float, where: str) -> None:
        if not math.isfinite(float(loss_sum)) or not self.params_finite():
            raise SldartsError(
                f"non-finite loss or parameters at {where}; the last good checkpoint in {self.out} is kept. "
                f"Lower lr (now {self.cfg.lr:g}) or disable amp and resume=true, or skip such batches "
                "with nan_policy=skip")

    def params_finite(self) -> bool:
        return True

    def _train_epoch(self) -> tuple[float, float, float]:
        e, loader = self.epoch, self.train_loader
        steps, start = len(loader), self.step_in_epoch
        self.begin_epoch(e * steps + start)
        self.model.train()
        loss_sum = torch.tensor(self.partial["loss"], device=self.device, dtype=torch.float64)
        correct = torch.tensor(self.partial["correct"], device=self.device, dtype=torch.float64)
        count = self.partial["count"]
        t0 = time.time() - self.partial["seconds"]
        self.progress.start_epoch(e + 1, self.cfg.epochs, steps, start)
        skipped = int(self.partial.get("skipped", 0))
        for k, (x, y) in enumerate(loader.epoch(e, start), start=start + 1):
            out = self.train_step(x, y)
            if out.skipped:
                skipped += 1
                self.progress.message(f"skipped epoch {e + 1} step {k}: non-finite loss or gradient "
                                      f"(nan_policy=skip, {skipped} this epoch)")
            loss_sum += out.loss.double() * out.count
            correct += out.correct.double()
            count += out.count
            self.step_in_epoch = k
            if self.progress.wants(k):
                self.check_finite(loss_sum, f"epoch {e + 1} step {k}")
                self.progress.update(k, float(loss_sum) / count, float(correct) / count)
            if self._stop_requested(k, steps) and k < steps:
                self.partial = {"loss": float(loss_sum), "correct": float(correct), "count": count,
                                "seconds": time.time() - t0, "skipped": skipped}
                self.check_finite(loss_sum, f"epoch {e + 1} step {k}")
                self._save()
                raise Stop(f"stopped by signal {self._stop_signal} at epoch {e + 1} step {k}/{steps}")
        self.progress.end_epoch()
        seconds = time.time() - t0
        broadcast_buffers(self.model)
        loss_sum, correct, cnt = all_sum(loss_sum, correct, torch.tensor(float(count), device=self.device))
        self.check_finite(loss_sum, f"the end of epoch {e + 1}")
        self.skipped_steps = skipped
        cnt = cnt.clamp_min(1)
        return float(loss_sum / cnt), float(correct / cnt), seconds

    def resume_command(self) -> str:
        return f"sldarts {self.kind} --config {self.out / 'config.yaml'} out={self.out} resume=true"

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if (self.out / "result.json").exists() and self.resuming:
            self.progress.message(f"{self.out}: already finished")
            return json.loads((self.out / "result.json").read_text())
        if self.dist.main and not self.resuming:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            ckpt.atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.progress.message(self.describe() + (f"; resuming after epoch {self.epoch}"
                                                 + (f" step {self.step_in_epoch}" if self.step_in_epoch else "")
                                                 if self.resuming else ""))
        if not self.resuming:
            self._record(0, None, None, 0.0, self.lr())
        started = time.time()
        old = self._install_signals()
        try:
            while self.epoch < cfg.epochs:
                lr = self.lr()  # the rate this epoch trains with
                loss, acc, seconds = self._train_epoch()
                self.sched.step()
                self.epoch += 1
                self.step_in_epoch = 0
                self.partial = self._zero()
                row = self._record(self.epoch, loss, acc, seconds, lr)
                self._save()
                self.progress.message(f"epoch {self.epoch}/{cfg.epochs} loss {loss:.4f} train {acc:.2%} "
                                      f"{self.summary_line(row)} {seconds:.1f}s")
                stop = self._agreed_stop if self.dist.world > 1 else self._stop_signal is not None
                if stop and self.epoch < cfg.epochs:
                    raise Stop(f"stopped by signal {self._stop_signal} after epoch {self.epoch}")
        except Stop as stop:
            self.progress.end_epoch()
            raise SldartsError(f"{stop}; checkpoint saved. Continue with: {self.resume_command()}") from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        last = read_metrics(self.out / "metrics.jsonl")[-1:] if self.dist.main else []
        result = self.result(time.time() - started, last[0] if last else None)
        result.update(run_dir=str(self.out), config=cfg.to_dict())
        if "warning" in result:
            self.progress.message("warning: " + result["warning"])
        if self.dist.main:
            for name, text in self.artifacts(result).items():
                ckpt.atomic_write_text(self.out / name, text)
            ckpt.atomic_write_text(self.out / "result.json", json.dumps(result, indent=1) + "\n")
            self.on_finish(result)
        return result
