"""Retraining a derived cell from scratch with a published recipe, in the shared epoch loop."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sldarts.cells import resolve_cell
from sldarts.config import RetrainConfig
from sldarts.data import build_train_data
from sldarts.evaluate.complexity import count_macs, count_params
from sldarts.run import EpochRun, StepOutput, accuracy, all_finite, autocast_for, skipped_step
from sldarts.spaces.base import eval_network_for


def lr_lambda(epochs: int, warmup: int, schedule: str):
    """Per-epoch factor of the base lr: linear warm-up, then cosine or linear decay to zero."""

    def f(e: int) -> float:
        if e < warmup:
            return (e + 1) / warmup
        t = (e - warmup) / max(epochs - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t

    return f


class RetrainRun(EpochRun):
    kind = "retrain"

    def default_dir(self) -> Path:
        return Path("runs") / f"retrain-{self.cfg.recipe}-{self.cfg.dataset}-s{self.cfg.seed}"

    def build(self) -> None:
        cfg = self.cfg
        self.space, self.arch = resolve_cell(cfg.source_run, cfg.genotype, cfg.arch)
        split = Path(cfg.source_run) / "split.json" if cfg.source_run else None
        recorded = json.loads(split.read_text()) if split is not None and split.exists() else None
        self.data = build_train_data(cfg, self.device, self.dist.rank, self.dist.world, recorded)
        self.train_loader = self.data.train
        info = self.data.info
        self.model = eval_network_for(self.space, self.arch, info.num_classes, info.in_channels,
                                      self.data.sample_shape[-1], dataset=cfg.dataset, channels=cfg.channels,
                                      cells=cfg.cells, auxiliary=cfg.auxiliary_weight > 0)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, nesterov=cfg.nesterov and cfg.momentum > 0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(cfg.epochs, cfg.warmup_epochs,
                                                                           cfg.lr_schedule))
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.autocast = autocast_for(cfg.amp, self.device)
        self.topk = (1, 5) if info.num_classes > 5 and cfg.dataset == "imagenet" else (1,)

    def stateful(self) -> dict[str, Any]:
        return {"model": self.model, "opt": self.opt, "sched": self.sched}

    def describe(self) -> str:
        cfg = self.cfg
        took = ""
        if cfg.source_run:
            from sldarts.config import searched_data

            same = {k: v for k, v in searched_data(cfg.source_run).items() if getattr(cfg, k) == v}
            took = (f"; from {cfg.source_run}: " + " ".join(f"{k}={v}" for k, v in same.items())
                    + (" and its split.json" if (Path(cfg.source_run) / "split.json").exists() else ""))
        return (f"retrain {self.space.name} cell with recipe {cfg.recipe} (lr={cfg.lr:g} batch_size={cfg.batch_size} "
                f"weight_decay={cfg.weight_decay:g}) on {cfg.dataset} "
                f"({self.data.train.num_samples} images), {cfg.epochs} epochs x {len(self.data.train)} steps, "
                f"{count_params(self.model) / 1e6:.3f}M params, on {self.device}"
                + (f" x {self.dist.world} processes" if self.dist.world > 1 else "") + took
                + (f"; {self.data.note}" if self.data.note else "")
                + f"; about {self._epoch_seconds():.3g} s per epoch (one step timed)")

    def _epoch_seconds(self) -> float:
        """One timed training step on a copy of the network (the run's weights and random state untouched),
        times the steps per epoch: a first estimate, printed before the first epoch."""
        import copy
        import time

        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            net = copy.deepcopy(self.model).train()
            x, y = next(iter(self.data.train.epoch(0)))
            t0 = time.time()
            out = net(x)
            logits = out[0] if isinstance(out, tuple) else out
            self.loss_fn(logits.float(), y).backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return (time.time() - t0) * len(self.data.train)

    def begin_epoch(self, global_step: int) -> None:
        if hasattr(self.model, "drop_path_prob"):  # linear ramp, as in DARTS
            self.model.drop_path_prob = self.cfg.drop_path * self.epoch / self.cfg.epochs

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            out = self.net(x)
        logits, aux = out if isinstance(out, tuple) else (out, None)
        loss = self.loss_fn(logits.float(), y)
        if aux is not None:
            loss = loss + self.cfg.auxiliary_weight * self.loss_fn(aux.float(), y)
        loss.backward()
        if self.cfg.nan_policy == "skip" and not all_finite([loss, *(p.grad for p in self.model.parameters())]):
            self.opt.zero_grad(set_to_none=True)
            return skipped_step(x.device)
        if self.cfg.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        return StepOutput(loss.detach(), (logits.detach().argmax(1) == y).sum(), len(y))

    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())

    @property
    def split_name(self) -> str:
        """What the per-epoch accuracy measures: the held-out validation images, or (the DARTS protocol on the
        built-in sets without ``valid_split``) the test split, named so; nothing in a retrain selects by it."""
        return "test" if self.data.eval_is_test else "valid"

    def measure(self) -> dict[str, Any]:
        accs = accuracy(self.model, self.data.eval, self.topk)
        row = {f"{self.split_name}_acc": accs[0]}
        if len(accs) > 1:
            row[f"{self.split_name}_top5"] = accs[1]
        return row

    def summary_line(self, row: dict[str, Any]) -> str:
        s = self.split_name
        return f"{s} {row[f'{s}_acc']:.2%}" + (f" top5 {row[f'{s}_top5']:.2%}" if f"{s}_top5" in row else "")

    def result(self, seconds: float, last: dict[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "space": self.space.name, "arch_key": self.space.arch_key, self.space.arch_key: self.arch,
            "recipe": self.cfg.recipe, "dataset": self.cfg.dataset, "epochs": self.cfg.epochs,
            # (a retrain resumed from an older sldarts logged valid_acc under the DARTS protocol too)
            "top1": last.get(f"{self.split_name}_acc", last.get("valid_acc")) if last else None,
            "seconds": round(seconds, 1),
            "params": count_params(self.model), "input": self.data.input_spec(),
        }
        top5 = last.get(f"{self.split_name}_top5", last.get("valid_top5")) if last else None
        if top5 is not None:
            out["top5"] = top5
        if self.data.eval_is_test:
            out["test_acc"] = out["top1"]
        elif self.data.test is not None:  # once, at the end
            out["test_acc"] = accuracy(self.model, self.data.test)[0]
        try:
            out["macs"] = count_macs(self.model, self.data.sample_shape)
        except RuntimeError:
            pass  # an input size the network cannot take (e.g. tiny test images)
        return out

    def artifacts(self, result: dict[str, Any]) -> dict[str, str]:
        return self.space.artifacts(self.arch)


def retrain(cfg: RetrainConfig) -> dict[str, Any]:
    """Python API: retrain the cell ``cfg`` names and return its result (top-1, params, MACs)."""
    return RetrainRun(cfg).run()
