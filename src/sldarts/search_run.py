"""A search run: supernet + strategy in the shared epoch loop; derivation and result at the end."""

from __future__ import annotations

import json
import os
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from sldarts.config import SearchConfig, load_config
from sldarts.data import Cycle, SearchData, build_search_data
from sldarts.distributed import all_sum
from sldarts.errors import SldartsError
from sldarts.lookup import ENV, open_benchmark
from sldarts.run import EpochRun, read_metrics
from sldarts.spaces import Supernet, build_supernet
from sldarts.strategies import make_optimizers, make_strategy


def arch_key(space: str) -> str:
    return "arch" if space == "nb201" else "genotype"


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


class SearchRun(EpochRun):
    kind = "search"

    def default_dir(self) -> Path:
        return Path("runs") / self.cfg.run_name

    def build(self) -> None:
        cfg = self.cfg
        self.data: SearchData = build_search_data(cfg, self.device, self.dist.rank, self.dist.world)
        self.train_loader = self.data.train
        self.model: Supernet = build_supernet(cfg, self.data.info.num_classes, self.data.info.in_channels)
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        if self.dist.world > 1:
            if cfg.optim == "bilevel" and cfg.order == 2:
                raise SldartsError("second-order bi-level search is not supported under torchrun: its "
                                   "finite-difference step perturbs weights per rank; use order=1 or one process")
            # α is a parameter of the wrapped model: its gradient is averaged in the same all-reduce as w.
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.w_opt, self.a_opt = make_optimizers(self.model, cfg)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=min(cfg.lr_min, cfg.lr))
        self.strategy = make_strategy(cfg, self.model, self.net, self.w_opt, self.a_opt,
                                      autocast_for(cfg.amp, self.device))
        self._arch_batch = None
        self.probe = None
        if cfg.analysis and self.dist.main:
            from sldarts.analysis import Probe

            self.probe = Probe(self.model, cfg.analysis_cells, self.out / "analysis.jsonl")
        self._gstep = 0
        self.benchmark = None
        if cfg.space == "nb201" and self.dist.main and (cfg.benchmark or os.environ.get(ENV)):
            self.benchmark = open_benchmark(cfg.benchmark or None)

    def stateful(self) -> dict[str, Any]:
        return {"model": self.model, "w_opt": self.w_opt, "a_opt": self.a_opt, "sched": self.sched}

    def describe(self) -> str:
        cfg = self.cfg
        return (f"search {cfg.space} on {cfg.dataset} ({self.data.train.num_samples} images for w"
                + (f", {self.data.arch.num_samples} for α" if self.data.arch is not None else "")
                + f"), optim={cfg.optim}{'' if cfg.optim == 'single' else f' order={cfg.order}'} "
                f"activation={cfg.activation} lr={cfg.lr:g}, {cfg.epochs} epochs x {len(self.data.train)} steps "
                f"on {self.device}" + (f" x {self.dist.world} processes" if self.dist.world > 1 else ""))

    def _load(self) -> None:
        super()._load()
        if self.probe is not None:
            self.probe.truncate(self.epoch * len(self.train_loader) + self.step_in_epoch)

    def begin_epoch(self, global_step: int) -> None:
        # α batches are positioned by the global step, so a resumed run draws the same ones.
        self._arch_batch = Cycle(self.data.arch, global_step).__next__ if self.data.arch is not None else None
        self._gstep = global_step

    def train_step(self, x: torch.Tensor, y: torch.Tensor):
        arch_batch = self._arch_batch
        if self.probe is not None and self._gstep % self.cfg.analysis_every == 0:
            a = arch_batch() if arch_batch is not None else None  # the α batch this very step will use
            self.probe.record(self.epoch + 1, self.step_in_epoch + 1, self._gstep, (x, y), a,
                              len(self.train_loader))
            if a is not None:
                arch_batch = lambda: a  # noqa: E731
        self._gstep += 1
        return self.strategy.step(x, y, arch_batch)

    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(a).all()) for a in self.model.alphas())

    def measure(self) -> dict[str, Any]:
        arch = self.model.derive()
        row = {"valid_acc": accuracy(self.model, self.data.eval)[0], **self.model.alpha_state(),
               arch_key(self.cfg.space): arch, "param_free_ratio": self.model.param_free_ratio(arch)}
        if self.benchmark is not None:
            row["benchmark"] = self.benchmark.query(arch)
        if self.probe is not None:
            row["analysis_seconds"] = round(self.probe.seconds, 3)
            self.probe.seconds = 0.0
        return row

    def summary_line(self, row: dict[str, Any]) -> str:
        key = arch_key(self.cfg.space)
        extra = ""
        if "analysis_seconds" in row and row.get("seconds"):
            a = row["analysis_seconds"]
            extra = f" (analysis {a:.1f}s of it, +{a / max(row['seconds'] - a, 1e-9):.0%})"
        return (f"valid {row['valid_acc']:.2%} param-free {row['param_free_ratio']:.2f} "
                f"{key} {json.dumps(row[key])}{extra}")

    def result(self, seconds: float, last: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        arch = self.model.derive()
        ratio = self.model.param_free_ratio(arch)
        out: dict[str, Any] = {"space": cfg.space, arch_key(cfg.space): arch, "param_free_ratio": ratio,
                               "valid_acc": last["valid_acc"] if last else None, "epochs": cfg.epochs,
                               "seconds": round(seconds, 1)}
        if self.benchmark is not None:
            out["benchmark"] = self.benchmark.query(arch)
        if self.dist.main:
            out["complexity"] = self._complexity(arch)
        if ratio > cfg.param_free_threshold:
            out["warning"] = (
                f"parameter-free ratio {ratio:.2f} exceeds {cfg.param_free_threshold}: the search may have "
                f"collapsed; the paper advises a lower weight learning rate (lr={cfg.lr:g} now, try "
                f"lr={cfg.lr / 5:g})")
        return out

    def _complexity(self, arch: Any) -> dict[str, Any]:
        """Params and MACs of the derived cell's evaluation network (DARTS: C=36/20 cells on CIFAR-size
        data sets, C=48/14 cells on ImageNet; NB201: the benchmark's network)."""
        from sldarts.evaluate.complexity import DATASETS, complexity

        ds = self.cfg.dataset if self.cfg.dataset in DATASETS else "cifar10"
        if self.cfg.space == "nb201" and ds == "imagenet":
            ds = "imagenet16-120"
        return {"dataset": ds, **complexity(self.cfg.space, arch, ds)}

    def artifacts(self, result: dict[str, Any]) -> dict[str, str]:
        if self.cfg.space == "darts":
            return {"genotype.json": json.dumps(result["genotype"], indent=1) + "\n"}
        return {}


    def on_finish(self, result: dict[str, Any]) -> None:
        from sldarts.plot import plot_cells

        try:
            plot_cells(self.cfg.space, result[arch_key(self.cfg.space)], self.out / "cell", formats=("png",))
        except (SldartsError, OSError) as exc:
            self.progress.message(f"cell diagram not drawn: {exc}")


def search(config: SearchConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Python API: ``sldarts.search(space="nb201", epochs=1)`` runs a search and returns its result."""
    cfg = config or SearchConfig()
    if overrides:
        cfg = load_config(None, overrides, base=cfg.to_dict())
    return auto_lr_search(cfg) if cfg.auto_lr else SearchRun(cfg).run()


def auto_lr_search(cfg: SearchConfig) -> dict[str, Any]:
    """The paper's advice as a loop: while a finished search's parameter-free ratio exceeds the threshold,
    search again with lr / auto_lr_factor, at most auto_lr_tries times. Every try is a run directory
    (try1, try2, ...) and is listed in auto_lr.json; the last try's result is returned."""
    from sldarts import checkpoint as ckpt

    base = Path(cfg.out) if cfg.out else Path("runs") / cfg.run_name
    base.mkdir(parents=True, exist_ok=True)
    tries: list[dict[str, Any]] = []
    lr = cfg.lr
    result: dict[str, Any] = {}
    for t in range(1, cfg.auto_lr_tries + 1):
        sub = cfg.replace(out=str(base / f"try{t}"), lr=lr, auto_lr=False)
        result = SearchRun(sub).run()
        tries.append({"try": t, "lr": lr, "param_free_ratio": result["param_free_ratio"],
                      arch_key(cfg.space): result[arch_key(cfg.space)], "run_dir": str(base / f"try{t}")})
        ckpt.atomic_write_text(base / "auto_lr.json", json.dumps(tries, indent=1) + "\n")
        if result["param_free_ratio"] <= cfg.param_free_threshold:
            break
        lr = lr / cfg.auto_lr_factor
    result = dict(result, auto_lr=tries)
    ckpt.atomic_write_text(base / "result.json", json.dumps(result, indent=1) + "\n")
    return result


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


def resolve_cell(run_dir: str | Path | None = None, genotype: str | None = None,
                 arch: str | None = None) -> tuple[str, Any]:
    """(space, cell) from exactly one of: a search run directory, a DARTS genotype name or JSON file,
    an NB201 arch string."""
    if sum(bool(v) for v in (run_dir, genotype, arch)) != 1:
        raise SldartsError("give exactly one of a run directory, --genotype NAME_OR_FILE or --arch STRING")
    if run_dir:
        d = derive(run_dir)
        return d["space"], d.get("arch", d.get("genotype"))
    if genotype:
        from sldarts.spaces.genotypes import resolve_genotype

        return "darts", resolve_genotype(genotype)
    from sldarts.spaces.nb201 import format_arch, parse_arch

    return "nb201", format_arch(parse_arch(str(arch)))
