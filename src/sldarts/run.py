"""The epoch loop shared by search and retraining: run directory, checkpoints and exact resume,
metrics, progress, graceful stop, non-finite checks, rank-0 I/O.

A run directory holds ``config.yaml``, ``metrics.jsonl`` (one line per epoch, plus epoch 0 before any
step), ``checkpoint.pt`` (after every epoch, and at a graceful stop), ``log.txt`` and at the end
``result.json``. Subclasses say what a step is and what to measure; they never touch files.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from sldarts import checkpoint as ckpt
from sldarts.blame import reraise
from sldarts.distributed import all_sum, barrier, broadcast_buffers, setup
from sldarts.errors import SldartsError
from sldarts.loggers import Loggers, flatten
from sldarts.progress import Progress
from sldarts.rundir import (
    RUN_DIRS,
    append_line,
    claim,
    prepare_run_dir,
    read_metrics,
    read_result,
    record_changes,
    refuse_links,
    unlock_run_dir,
)
from sldarts.steps import StepOutput, all_finite, skipped_step  # noqa: F401 (what a step reports)

__all__ = ["EpochRun", "StepOutput", "StopSignal", "Stop", "accuracy", "all_finite", "autocast_for",
           "read_metrics", "skipped_step"]


def autocast_for(amp: str, device: torch.device):
    dtype = {"bf16": torch.bfloat16}.get(amp)
    return partial(torch.autocast, device.type, dtype=dtype) if dtype is not None else nullcontext


@torch.no_grad()
def accuracy(model: torch.nn.Module, loader, topk: tuple[int, ...] = (1,)) -> list[float]:
    """Top-k accuracies over a loader's epoch 0, summed over ranks; handles (logits, aux) outputs."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    hits = [torch.zeros((), device=device, dtype=torch.float64) for _ in topk]
    count = torch.zeros((), device=device, dtype=torch.float64)
    for x, y in loader.epoch(0):
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        top = logits.topk(min(max(topk), logits.shape[1]), dim=1).indices
        for i, k in enumerate(topk):
            hits[i] += (top[:, :k] == y[:, None]).any(1).sum()
        count += len(y)
    model.train(was)
    *hits, count = all_sum(*hits, count)
    return [float(h / count.clamp_min(1)) for h in hits]


def resolve_fn(spec: str, what: str):
    """``loss=``/``metric=``: a built-in name, or an import path to ``fn(outputs, labels)``; None when empty."""
    if not spec:
        return None
    import torch.nn.functional as F

    named = {"cross_entropy": F.cross_entropy, "mse": F.mse_loss, "l1": F.l1_loss,
             "bce": F.binary_cross_entropy_with_logits}
    if spec in named:
        return named[spec]
    if spec.startswith("<"):
        raise SldartsError(f"{what}={spec} was a Python callable passed to sldarts.search; pass it again "
                           f"({what}=fn) or name it as pkg.mod:fn")
    from sldarts.registry import load_object

    fn = load_object(spec, what)
    if not callable(fn):
        raise SldartsError(f"{what} {spec!r} is a {type(fn).__name__}, not a function (outputs, labels) -> tensor")
    return fn


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, fn) -> float:
    """The sample-weighted mean of ``fn(outputs, labels)`` (a batch mean) over a loader's epoch 0, summed
    over ranks: a validation loss or metric for any task."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for x, y in loader.epoch(0):
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        total += torch.as_tensor(fn(out.float(), y), device=device).double() * len(y)
        count += len(y)
    model.train(was)
    total, count = all_sum(total, count)
    return float(total / count.clamp_min(1))


@dataclass
class Partial:
    """Sums of an epoch interrupted by a graceful stop, kept in the checkpoint to finish it exactly."""

    loss: float = 0.0
    correct: float = 0.0
    count: float = 0.0
    seconds: float = 0.0
    skipped: float = 0.0


class StopSignal:
    """SIGTERM/SIGINT (or :meth:`request_stop`) asks the loop to stop after the current step. Under
    torchrun every rank must stop at the same step, so the ranks agree (an all-reduce of the flag) at the
    progress points only, keeping the step itself sync-free."""

    def __init__(self, world: int, device: torch.device) -> None:
        self.world, self.device = world, device
        self.signum: int | None = None
        self.agreed = False
        self._old: dict = {}

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum

    def _handler(self, signum, frame) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignal:
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}

    def check(self, at_sync_point: bool) -> bool:
        """Whether to stop now (call after each step; ``at_sync_point`` on every rank alike)."""
        if self.world == 1:
            return self.signum is not None
        if not at_sync_point:
            return False
        flag = torch.tensor([0.0 if self.signum is None else 1.0], device=self.device)
        (flag,) = all_sum(flag)
        self.agreed = bool(flag.item() > 0)
        if self.agreed and self.signum is None:
            self.signum = signal.SIGTERM
        return self.agreed

    def requested(self) -> bool:
        """The decision at an epoch end (the ranks' common one under torchrun)."""
        return self.agreed if self.world > 1 else self.signum is not None

def _mean(total: torch.Tensor | float, count: float) -> float:
    return float(total) / count if count else float("nan")


def _tensors(obj: Any):
    """Every tensor in a (nested) state dict."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


class Stop(Exception):
    """Raised inside the loop after a graceful stop's checkpoint is written."""


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
        self._shape: tuple[int, ...] | None = None  # the batch in flight, for errors in the user's code
        try:
            self.build()
        except (Exception, SystemExit) as exc:
            self._release()
            reraise(exc)
            raise
        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed within the current epoch (graceful stop)
        self.partial = Partial()
        self.stop = StopSignal(self.dist.world, self.device)
        self.loggers = Loggers("", Path("."), {}, False, 0)  # opened by run()
        self.skipped_steps = 0  # non-finite batches dropped in the last epoch (nan_policy=skip)
        self.resuming = resuming and (self.out / "checkpoint.pt").exists()
        if self.resuming:
            try:
                self._load()
            except BaseException:
                self._release()
                raise

    def _release(self) -> None:
        """A run that cannot start gives its directory's lock back at once (not at the process's end)."""
        if self.dist.main:
            unlock_run_dir(self.out)

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

    def end_epoch(self) -> None:
        """Called after an epoch's training, before its metrics and checkpoint (``self.epoch`` counts it)."""

    def early_stop(self) -> str | None:
        """Why the run ends before ``epochs`` (checked before each epoch, so a resumed run sees it too)."""
        return None

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
    def _save(self) -> None:
        self.check_state_finite()
        if self.dist.main:
            state = {name: obj.state_dict() for name, obj in self.stateful().items()}
            state.update(epoch=self.epoch, step_in_epoch=self.step_in_epoch, partial=asdict(self.partial),
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
            self.partial = Partial(**{k: float(v) for k, v in st["partial"].items()})
            ckpt.set_rng_state(st["rng"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise SldartsError(f"checkpoint {path} does not fit this run "
                               f"({str(exc).splitlines()[0][:120]}); use overwrite=true") from None
        if self.dist.main:  # drop metric lines newer than the checkpoint (crash between the two writes)
            rows = [r for r in read_metrics(self.out / "metrics.jsonl") if r["epoch"] <= self.epoch]
            if [r.get("epoch") for r in rows] != list(range(self.epoch + 1)):
                raise SldartsError(f"{self.out / 'metrics.jsonl'} lacks epochs of the checkpoint's {self.epoch} "
                                   "(deleted or edited?): restore it, or start again with overwrite=true")
            ckpt.atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            finished = (self.out / "result.json").exists()
            changes = {} if finished else record_changes(self.out, self.cfg.to_dict(), self.epoch,
                                                         self.step_in_epoch)
            if changes:
                self.progress.message("resumed with " + ", ".join(f"{k}={v[1]} (was {v[0]})"
                                                                  for k, v in changes.items()))
        self._apply_lr()

    def _apply_lr(self) -> None:
        """A resume with another ``lr``: the schedule goes on from the same epoch with the new base rate."""
        sched = self.sched
        if not hasattr(sched, "base_lrs") or sched.base_lrs[0] == self.cfg.lr:
            return
        sched.base_lrs = [self.cfg.lr for _ in sched.base_lrs]
        if hasattr(sched, "eta_min") and hasattr(self.cfg, "lr_min"):
            sched.eta_min = min(self.cfg.lr_min, self.cfg.lr)
        closed = getattr(sched, "_get_closed_form_lr", None)
        lrs = closed() if closed is not None else sched.get_lr()
        for group, lr in zip(sched.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        sched._last_lr = list(lrs)

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
        if self.loggers:  # one step axis: the global step that ends the epoch
            step = epoch * len(self.train_loader)
            self.loggers.scalars(flatten(row), step)
            self.loggers.images(self.figures(row), step)
            self.loggers.flush()
        return row

    def figures(self, row: dict[str, Any]) -> dict[str, Any]:
        """Images for the dashboards each epoch (tag -> RGB array)."""
        return {}

    def final_figures(self) -> dict[str, Any]:
        """Images for the dashboards at the end (the derived cell's diagram)."""
        return {}

    def check_finite(self, loss_sum: torch.Tensor | float, where: str) -> None:
        if not math.isfinite(float(loss_sum)) or not self.params_finite():
            self._non_finite(f"non-finite loss or parameters at {where}")

    def check_state_finite(self) -> None:
        """Weights, buffers, α and every optimiser's state: nothing non-finite is ever checkpointed."""
        tensors = [t for obj in self.stateful().values() for t in _tensors(obj.state_dict())
                   if t.is_floating_point() or t.is_complex()]
        if not all_finite(tensors):
            self._non_finite(f"non-finite weights or optimiser state after epoch {self.epoch} step "
                             f"{self.step_in_epoch}")

    def _non_finite(self, what: str) -> None:
        """Stop with advice that resume accepts (lr, amp and nan_policy may change on resume)."""
        kept = (f"the last good checkpoint in {self.out} is kept" if (self.out / "checkpoint.pt").exists()
                else f"no checkpoint yet in {self.out} (resuming starts it again)")
        other = (["amp=none"] if self.cfg.amp != "none" else []) + (
            ["nan_policy=skip"] if self.cfg.nan_policy != "skip" else [])
        raise SldartsError(f"{what}; {kept}. Lower lr (now {self.cfg.lr:g}), disable amp or skip such batches: "
                           f"{self.resume_command()} lr={self.cfg.lr / 10:g}"
                           + (f" (or {', or '.join(other)})" if other else ""))

    def params_finite(self) -> bool:
        return True

    def _train_epoch(self) -> tuple[float, float, float]:
        e, loader = self.epoch, self.train_loader
        steps, start = len(loader), self.step_in_epoch
        self.begin_epoch(e * steps + start)
        self.model.train()
        loss_sum = torch.tensor(self.partial.loss, device=self.device, dtype=torch.float64)
        correct = torch.tensor(self.partial.correct, device=self.device, dtype=torch.float64)
        count = self.partial.count
        t0 = time.time() - self.partial.seconds
        self.progress.start_epoch(e + 1, self.cfg.epochs, steps, start)
        skipped = int(self.partial.skipped)
        for k, (x, y) in enumerate(loader.epoch(e, start), start=start + 1):
            self._shape = tuple(x.shape)
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
                mean_loss, mean_acc = _mean(loss_sum, count), _mean(correct, count)  # every step skipped: NaN
                self.progress.update(k, mean_loss, mean_acc)
                if self.loggers:
                    self.loggers.scalars({"step/train_loss": mean_loss, "step/train_acc": mean_acc}, e * steps + k)
            if self.stop.check(self.progress.wants(k) or k == steps) and k < steps:
                self.partial = Partial(float(loss_sum), float(correct), count, time.time() - t0, skipped)
                self.check_finite(loss_sum, f"epoch {e + 1} step {k}")
                self._save()
                raise Stop(f"stopped by signal {self.stop.signum} at epoch {e + 1} step {k}/{steps}")
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
        try:
            if (self.out / "result.json").exists() and self.resuming:
                self.progress.message(f"{self.out}: already finished")
                return read_result(self.out)
            if self.dist.main:
                refuse_links(self.out)
            before = {d for d in RUN_DIRS if (self.out / d).exists()}
            self.loggers = Loggers(cfg.logger, self.out, cfg.to_dict(), self.resuming,
                                   self.epoch * len(self.train_loader) + self.step_in_epoch, enabled=self.dist.main)
            try:
                return self._run()
            except (Exception, SystemExit) as exc:
                reraise(exc, self._shape)
                raise
            finally:
                self.loggers.finish()
                if self.dist.main:  # the dashboards' folders this run created are its own
                    claim(self.out, [d for d in RUN_DIRS if (self.out / d).exists() and d not in before])
        finally:
            self._release()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main and not self.resuming:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            ckpt.atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.progress.message(self.describe() + (f"; resuming after epoch {self.epoch}"
                                                 + (f" step {self.step_in_epoch}" if self.step_in_epoch else "")
                                                 if self.resuming else ""))
        if not self.resuming:
            self._record(0, None, None, 0.0, self.lr())
        started = time.time()
        try:
            with self.stop:
                while self.epoch < cfg.epochs:
                    why = self.early_stop()
                    if why:
                        self.progress.message(f"stopping after epoch {self.epoch} of {cfg.epochs}: {why}")
                        break
                    lr = self.lr()  # the rate this epoch trains with
                    loss, acc, seconds = self._train_epoch()
                    self.sched.step()
                    self.epoch += 1
                    self.step_in_epoch = 0
                    self.partial = Partial()
                    self.end_epoch()
                    row = self._record(self.epoch, loss, acc, seconds, lr)
                    self._save()
                    self.progress.message(f"epoch {self.epoch}/{cfg.epochs} loss {loss:.4f} train {acc:.2%} "
                                          f"{self.summary_line(row)} {seconds:.1f}s")
                    if self.stop.requested() and self.epoch < cfg.epochs:
                        raise Stop(f"stopped by signal {self.stop.signum} after epoch {self.epoch}")
        except Stop as stop:
            self.progress.end_epoch()
            raise SldartsError(f"{stop}; checkpoint saved. Continue with: {self.resume_command()}") from None
        last = read_metrics(self.out / "metrics.jsonl")[-1:] if self.dist.main else []
        result = self.result(time.time() - started, last[0] if last else None)
        result.update(run_dir=str(self.out), config=cfg.to_dict())
        if self.dist.main:
            claim(self.out, self.artifacts(result))
            for name, text in self.artifacts(result).items():
                ckpt.atomic_write_text(self.out / name, text)
            ckpt.atomic_write_text(self.out / "result.json", json.dumps(result, indent=1) + "\n")
            self.on_finish(result)
            if self.loggers:
                self.loggers.images(self.final_figures(), cfg.epochs * len(self.train_loader))
        return result
