"""The search loop: epochs, schedule, checkpoints and exact resume, metrics, progress, rank-0 I/O.

Only this module (and the CLI) touches files. A run directory holds ``config.yaml``, ``metrics.jsonl``
(one line per epoch, plus epoch 0 before any step), ``checkpoint.pt`` (after every epoch, or at a
graceful stop), ``log.txt`` and at the end ``result.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import signal
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from sldarts import checkpoint as ckpt
from sldarts.config import SearchConfig, load_config
from sldarts.data import Cycle, SearchData, build_search_data
from sldarts.distributed import all_sum, barrier, setup
from sldarts.errors import SldartsError
from sldarts.progress import Progress
from sldarts.spaces import Supernet, build_supernet
from sldarts.strategies import make_optimizers, make_strategy

# Keys that may differ between a run and its resumption without changing what it computes.
OPERATIONAL = {"resume", "overwrite", "device", "progress", "workers", "threads", "log_every", "out"}
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json", "log.txt", "genotype.json")


class Stop(Exception):
    """Raised inside the loop after a graceful stop's checkpoint is written."""


def run_dir_for(cfg: SearchConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / cfg.run_name


def arch_key(space: str) -> str:
    return "arch" if space == "nb201" else "genotype"


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


def prepare_run_dir(cfg: SearchConfig, main: bool = True) -> tuple[Path, bool]:
    """Create or check the run directory. Returns (path, resuming)."""
    out = run_dir_for(cfg)
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


class SearchRun:
    """One search. ``run()`` returns the result dict also written to ``result.json``."""

    def __init__(self, cfg: SearchConfig) -> None:
        self.cfg = cfg
        self.dist, self.device = setup(cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        self.out, resuming = prepare_run_dir(cfg, self.dist.main)
        barrier()
        self.progress = Progress(cfg.progress, cfg.log_every, self.out / "log.txt", enabled=self.dist.main)

        torch.manual_seed(cfg.seed)
        self.data: SearchData = build_search_data(cfg, self.device, self.dist.rank, self.dist.world)
        self.model: Supernet = build_supernet(cfg, self.data.info.num_classes, self.data.info.in_channels)
        self.model.to(self.device)
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            if cfg.optim == "bilevel" and cfg.order == 2:
                raise SldartsError("second-order bi-level search is not supported under torchrun: its "
                                   "finite-difference step perturbs weights per rank; use order=1 or one process")
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.w_opt, self.a_opt = make_optimizers(self.model, cfg)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=min(cfg.lr_min, cfg.lr))
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        autocast = partial(torch.autocast, self.device.type, dtype=amp) if amp is not None else nullcontext
        self.strategy = make_strategy(cfg, self.model, self.net, self.w_opt, self.a_opt, autocast)

        self.epoch = 0  # epochs completed
        self.step_in_epoch = 0  # steps completed within the current epoch (graceful stop)
        self.partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
        self._stop_signal: int | None = None
        self.resuming = resuming and (self.out / "checkpoint.pt").exists()
        if self.resuming:
            self._load()

    # -- checkpointing ----------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "partial": dict(self.partial),
            "model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(), "sched": self.sched.state_dict(), "rng": ckpt.rng_state(),
            "space": self.cfg.space, "world": self.dist.world,
        }

    def _save(self) -> None:
        if self.dist.main:
            ckpt.save(self.out / "checkpoint.pt", "search", self._state())
        barrier()

    def _load(self) -> None:
        st = ckpt.load(self.out / "checkpoint.pt", "search")
        try:
            self.model.load_state_dict(st["model"])
            self.w_opt.load_state_dict(st["w_opt"])
            self.a_opt.load_state_dict(st["a_opt"])
            self.sched.load_state_dict(st["sched"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise SldartsError(f"checkpoint {self.out / 'checkpoint.pt'} does not fit this search "
                               f"({str(exc).splitlines()[0][:120]}); use overwrite=true") from None
        self.epoch, self.step_in_epoch = int(st["epoch"]), int(st["step_in_epoch"])
        self.partial = {k: float(v) for k, v in st["partial"].items()}
        ckpt.set_rng_state(st["rng"])
        if self.dist.main:  # drop metric lines newer than the checkpoint (crash between the two writes)
            rows = [r for r in read_metrics(self.out / "metrics.jsonl") if r["epoch"] <= self.epoch]
            ckpt.atomic_write_text(self.out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    # -- measurement ------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        was = self.model.training
        self.model.eval()
        correct = torch.zeros((), device=self.device)
        count = torch.zeros((), device=self.device)
        for x, y in self.data.eval.epoch(0):
            logits = self.model(x)
            correct += (logits.argmax(1) == y).sum()
            count += len(y)
        self.model.train(was)
        correct, count = all_sum(correct, count)
        return float(correct / count.clamp_min(1))

    def _record(self, epoch: int, train_loss: float | None, train_acc: float | None, seconds: float) -> dict:
        arch = self.model.derive()
        eval_t = time.time()
        row: dict[str, Any] = {
            "epoch": epoch, "lr": self.w_opt.param_groups[0]["lr"], "train_loss": train_loss,
            "train_acc": train_acc, "valid_acc": self.evaluate(),
            **self.model.alpha_state(),
            arch_key(self.cfg.space): arch, "param_free_ratio": self.model.param_free_ratio(arch),
            "seconds": round(seconds, 3), "eval_seconds": round(time.time() - eval_t, 3),
        }
        if self.dist.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
        return row

    # -- signals ----------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._stop_signal = signum

    def _install_signals(self):
        old = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            try:
                old[s] = signal.signal(s, self._on_signal)
            except ValueError:  # not the main thread
                pass
        return old

    # -- the loop ---------------------------------------------------------------------------
    def _check_finite(self, loss_sum: torch.Tensor, where: str) -> None:
        bad = not math.isfinite(float(loss_sum)) or any(not torch.isfinite(a).all() for a in self.model.alphas())
        if bad:
            raise SldartsError(
                f"non-finite loss or α at {where}; the last good checkpoint in {self.out} is kept. "
                f"Lower lr (now {self.cfg.lr:g}) or arch_lr, or disable amp, then resume=true")

    def _train_epoch(self) -> tuple[float, float, float]:
        cfg, e = self.cfg, self.epoch
        loader = self.data.train
        steps = len(loader)
        start = self.step_in_epoch
        global_step = e * steps + start
        arch_batch = None
        if self.data.arch is not None:
            cycle = Cycle(self.data.arch, global_step)
            arch_batch = cycle.__next__
        self.model.train()
        loss_sum = torch.tensor(self.partial["loss"], device=self.device, dtype=torch.float64)
        correct = torch.tensor(self.partial["correct"], device=self.device, dtype=torch.float64)
        count = self.partial["count"]
        t0 = time.time() - self.partial["seconds"]
        self.progress.start_epoch(e + 1, cfg.epochs, steps, start)
        for k, (x, y) in enumerate(loader.epoch(e, start), start=start + 1):
            out = self.strategy.step(x, y, arch_batch)
            loss_sum += out.loss.double() * out.count
            correct += out.correct.double()
            count += out.count
            self.step_in_epoch = k
            if self.progress.wants(k):
                self._check_finite(loss_sum, f"epoch {e + 1} step {k}")
                self.progress.update(k, float(loss_sum) / count, float(correct) / count)
            if self._stop_signal is not None and k < steps:
                self.partial = {"loss": float(loss_sum), "correct": float(correct), "count": count,
                                "seconds": time.time() - t0}
                self._check_finite(loss_sum, f"epoch {e + 1} step {k}")
                self._save()
                raise Stop(f"stopped by signal {self._stop_signal} at epoch {e + 1} step {k}/{steps}")
        self.progress.end_epoch()
        seconds = time.time() - t0
        loss_sum, correct, cnt = all_sum(loss_sum, correct, torch.tensor(float(count), device=self.device))
        self._check_finite(loss_sum, f"the end of epoch {e + 1}")
        return float(loss_sum / cnt), float(correct / cnt), seconds

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if (self.out / "result.json").exists() and self.resuming:
            self.progress.message(f"{self.out}: already finished")
            return json.loads((self.out / "result.json").read_text())
        if self.dist.main and not self.resuming:
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            ckpt.atomic_write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.progress.message(
            f"search {cfg.space} on {cfg.dataset} ({self.data.train.num_samples} images for w"
            + (f", {self.data.arch.num_samples} for α" if self.data.arch is not None else "")
            + f"), optim={cfg.optim}{'' if cfg.optim == 'single' else f' order={cfg.order}'} "
            f"activation={cfg.activation}, {cfg.epochs} epochs x {len(self.data.train)} steps on {self.device}"
            + (f" x {self.dist.world} processes" if self.dist.world > 1 else "")
            + (f"; resuming after epoch {self.epoch}" if self.resuming else ""))
        if not self.resuming:
            self._record(0, None, None, 0.0)
        started = time.time()
        old = self._install_signals()
        try:
            while self.epoch < cfg.epochs:
                loss, acc, seconds = self._train_epoch()
                self.sched.step()
                self.epoch += 1
                self.step_in_epoch = 0
                self.partial = {"loss": 0.0, "correct": 0.0, "count": 0.0, "seconds": 0.0}
                row = self._record(self.epoch, loss, acc, seconds)
                self._save()
                self.progress.message(
                    f"epoch {self.epoch}/{cfg.epochs} loss {loss:.4f} train {acc:.2%} valid {row['valid_acc']:.2%} "
                    f"param-free {row['param_free_ratio']:.2f} {seconds:.1f}s "
                    f"{arch_key(cfg.space)} {json.dumps(row[arch_key(cfg.space)])}")
                if self._stop_signal is not None and self.epoch < cfg.epochs:
                    raise Stop(f"stopped by signal {self._stop_signal} after epoch {self.epoch}")
        except Stop as stop:
            self.progress.end_epoch()
            raise SldartsError(f"{stop}; checkpoint saved. Continue with: sldarts search "
                               f"--config {self.out / 'config.yaml'} out={self.out} resume=true") from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return self._finish(time.time() - started)

    def _finish(self, seconds: float) -> dict[str, Any]:
        cfg = self.cfg
        arch = self.model.derive()
        ratio = self.model.param_free_ratio(arch)
        last = read_metrics(self.out / "metrics.jsonl")[-1:] if self.dist.main else []
        result: dict[str, Any] = {
            "space": cfg.space, arch_key(cfg.space): arch, "param_free_ratio": ratio,
            "valid_acc": last[0]["valid_acc"] if last else None, "epochs": cfg.epochs,
            "seconds": round(seconds, 1), "run_dir": str(self.out), "config": cfg.to_dict(),
        }
        if ratio > cfg.param_free_threshold:
            result["warning"] = (
                f"parameter-free ratio {ratio:.2f} exceeds {cfg.param_free_threshold}: the search may have "
                f"collapsed; the paper advises a lower weight learning rate (lr={cfg.lr:g} now, try "
                f"lr={cfg.lr / 5:g})")
            self.progress.message("warning: " + result["warning"])
        if self.dist.main:
            if cfg.space == "darts":
                ckpt.atomic_write_text(self.out / "genotype.json", json.dumps(arch, indent=1) + "\n")
            ckpt.atomic_write_text(self.out / "result.json", json.dumps(result, indent=1) + "\n")
        return result


def search(config: SearchConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Python API: ``sldarts.search(space="nb201", epochs=1)`` runs a search and returns its result."""
    cfg = config or SearchConfig()
    if overrides:
        cfg = load_config(None, overrides, base=cfg.to_dict())
    return SearchRun(cfg).run()


def derive(run_dir: str | Path) -> dict[str, Any]:
    """The derived architecture of a run: from result.json when finished, else the last metrics line."""
    run = Path(run_dir)
    if (run / "result.json").exists():
        res = json.loads((run / "result.json").read_text())
        key = arch_key(res["space"])
        return {"space": res["space"], key: res[key], "param_free_ratio": res["param_free_ratio"],
                "finished": True}
    rows = read_metrics(run / "metrics.jsonl")
    if not rows:
        raise SldartsError(f"{run} is not a search run directory (no result.json or metrics.jsonl)")
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").exists() else {}
    space = cfg.get("space", "nb201" if "arch" in rows[-1] else "darts")
    key = arch_key(space)
    return {"space": space, key: rows[-1][key], "param_free_ratio": rows[-1]["param_free_ratio"],
            "epoch": rows[-1]["epoch"], "finished": False}
