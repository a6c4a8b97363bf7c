"""A search run: supernet + strategy in the shared epoch loop; derivation and result at the end.

The space object (:mod:`sldarts.spaces`) answers every space-specific question: the supernet, the key and
format of the derived architecture, the evaluation network counted at the end, the cell drawing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from sldarts.cells import derive, resolve_cell
from sldarts.config import SearchConfig, load_config
from sldarts.data import Cycle, SearchData, build_search_data
from sldarts.decided import margins, note, stability
from sldarts.errors import SldartsError
from sldarts.lookup import BENCHMARK_SETS, ENV, open_benchmark
from sldarts.methods import Method, resolve
from sldarts.run import EpochRun, accuracy, autocast_for, evaluate, resolve_fn
from sldarts.rundir import claim, read_metrics
from sldarts.spaces import SearchSpace, Supernet
from sldarts.spaces.base import Decision, eval_network_for
from sldarts.strategies import make_optimizers, make_strategy

__all__ = ["SearchRun", "auto_lr_search", "derive", "resolve_cell", "search"]


class SearchRun(EpochRun):
    kind = "search"

    def __init__(self, cfg: SearchConfig, *, model: torch.nn.Module | None = None, train_data: Any = None,
                 valid_data: Any = None, test_data: Any = None, loss: Any = None, metric: Any = None) -> None:
        """``model``: a user network with sldarts.nn choices (else ``cfg.space`` builds the supernet);
        ``train_data``/``valid_data``/``test_data``: map-style datasets (else ``cfg.dataset`` names the data)."""
        self._user_model, self._train_data, self._valid_data = model, train_data, valid_data
        self.method: Method = resolve(cfg)  # before the run directory: config.yaml records what runs
        self._test_data = test_data
        self._loss = loss if callable(loss) else resolve_fn(cfg.loss, "loss")
        self._metric = metric if callable(metric) else resolve_fn(cfg.metric, "metric")
        super().__init__(cfg)

    def default_dir(self) -> Path:
        return Path("runs") / self.cfg.run_name

    def build(self) -> None:
        cfg = self.cfg
        # first, so that a missing or refused benchmark stops the search before the data are read: the
        # shipped table by default on a data set the benchmark measured, a named file (benchmark= or
        # $SLDARTS_NB201) on any data set
        self.benchmark = None
        named = cfg.benchmark or os.environ.get(ENV)
        space = cfg.search_space() if self._user_model is None else None
        if space is not None and space.benchmark and self.dist.main and (named or cfg.dataset in BENCHMARK_SETS):
            self.benchmark = open_benchmark(cfg.benchmark or None, trust=cfg.trust)
        split_file = self.out / "split.json"
        recorded = json.loads(split_file.read_text()) if cfg.resume and split_file.exists() else None
        self.data: SearchData = build_search_data(cfg, self.device, self.dist.rank, self.dist.world,
                                                  self._train_data, self._valid_data, self._test_data, recorded)
        if self.dist.main and self.data.split:
            from sldarts import checkpoint as ckpt

            ckpt.atomic_write_text(split_file, json.dumps(self.data.split, indent=1) + "\n")
        self.train_loader = self.data.train
        info = self.data.info
        if self._user_model is not None:
            from sldarts.spaces.model import ModelSpace

            model = self._user_model
            self.space: SearchSpace = ModelSpace(lambda num_classes, in_channels: model, cfg.space)
        else:
            self.space = space
            cfg.input_side = self.data.sample_shape[-1]  # stem=auto fits the stem to the images searched
        self.model: Supernet = self.method.apply(self.space.supernet(cfg, info.num_classes, info.in_channels))
        self.cost = self._cost_term()  # counted on the CPU copy, before the model moves; a loss part of the method
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.net: torch.nn.Module = self.model
        if cfg.sync_bn:
            from sldarts.distributed import use_global_batch_norm

            use_global_batch_norm(self.model)
        if self.dist.world > 1:
            if cfg.optim == "bilevel" and cfg.order == 2:
                raise SldartsError("second-order bi-level search is not supported under torchrun: its "
                                   "finite-difference step perturbs weights per rank; use order=1 or one process")
            # α is a parameter of the wrapped model: its gradient is averaged in the same all-reduce as w.
            # sampling methods (GDAS, RSPS) leave the unchosen ops' weights unused in a step
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.method.sparse)
        self.w_opt, self.a_opt = make_optimizers(self.model, cfg)
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, cfg.epochs, eta_min=min(cfg.lr_min, cfg.lr))
        self.strategy = make_strategy(cfg, self.model, self.net, self.w_opt, self.a_opt,
                                      autocast_for(cfg.amp, self.device), method=self.method)
        if self._loss is not None:  # loss=: any task (regression, multi-label); α and w both see it
            self.strategy.loss_fn = self._loss
        self._arch_batch = None
        self.probe = None
        if cfg.analysis and self.dist.main:
            from sldarts.analysis import Probe

            self.probe = Probe(self.model, cfg.analysis_cells, self.out / "analysis.jsonl")
        self._gstep = 0

    def _cost_term(self) -> Any:
        """cost=...: the cost model of this space and the loss part on α (sldarts.budget)."""
        from sldarts.budget import CostOptions, CostTerm, cost_model

        cfg = self.cfg
        if not cfg.cost:
            return None
        options = CostOptions.from_config(cfg)
        info = self.data.info
        with torch.random.fork_rng(devices=[]):  # the networks it counts draw weights: not from the run's stream
            model = cost_model(options, self.space, self.model, cfg.dataset, info.num_classes, info.in_channels,
                               self.data.sample_shape)
        if self.dist.main:
            from sldarts import checkpoint as ckpt

            ckpt.atomic_write_text(self.out / "cost_table.json", json.dumps(model.describe(), indent=1) + "\n")
            if model.latency is not None:
                self.progress.message(model.latency.note())
        term = CostTerm(model, options, cfg.derive)
        self.method.parts.append(term)  # one more loss part: the strategy adds its loss, on_epoch is called
        return term

    def stateful(self) -> dict[str, Any]:
        out = {"model": self.model, "w_opt": self.w_opt, "a_opt": self.a_opt, "sched": self.sched}
        if self.method.has_state:  # a part's own state (ENAS's controller, DARTS+'s history)
            out["method"] = self.method
        return out if self.cost is None else {**out, "cost": self.cost}

    def end_epoch(self) -> None:
        self.method.end_epoch(self.epoch, self.cfg.epochs, self.model)

    def early_stop(self) -> str | None:
        return self.method.stop_reason()

    def describe(self) -> str:
        cfg = self.cfg
        return (f"search {cfg.space} on {cfg.dataset} ({self.data.train.num_samples} images for w"
                + (f", {self.data.arch.num_samples} for α" if self.data.arch is not None else "")
                + f"), optim={cfg.optim}{'' if cfg.optim == 'single' else f' order={cfg.order}'} "
                f"activation={cfg.activation} lr={cfg.lr:g}, {cfg.epochs} epochs x {len(self.data.train)} steps "
                f"on {self.device}" + (f" x {self.dist.world} processes" if self.dist.world > 1 else "")
                + (f"; {self.data.note}" if self.data.note else "") + self._stem_note())

    def _stem_note(self) -> str:
        """Which stem a built-in space chose for the input size (printed at the start)."""
        if self._user_model is not None:
            return ""
        side = self.data.sample_shape[-1]
        stem = getattr(self.model, "stem", None)
        reduce = (sum(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in stem.modules())
                  if stem is not None else 0)
        if getattr(self.model, "stem1", None) is not None:
            reduce = 3
        return f"; {side} px input, stem reduces by {2 ** reduce} (stem={self.cfg.stem})"

    def _load(self) -> None:
        super()._load()
        if self.probe is not None:
            self.probe.truncate(self.epoch * len(self.train_loader) + self.step_in_epoch)

    def begin_epoch(self, global_step: int) -> None:
        self.method.on_epoch(self.epoch, self.cfg.epochs)  # GDAS's temperature, DARTS-'s skip coefficient, ...
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
        self.method.on_step(self.step_in_epoch, len(self.train_loader))
        return self.strategy.step(x, y, arch_batch)

    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(a).all()) for a in self.model.alphas())

    def _derive(self) -> Any:
        rule = self.cfg.derive
        return self.model.derive() if rule == "argmax" else self.model.derive(rule)

    def _select(self, selector) -> tuple[Any, dict[str, Any]]:
        """RSPS, SETN, ENAS: the part chooses the architecture, scoring candidates on the first validation
        batches (the same for every candidate, or each its own with setn_select=top) with the run's seed."""
        def valid_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
            return [b for _, b in zip(range(n), self.data.eval.epoch(0), strict=False)]

        weights, extra = selector.select(self.model, valid_batches, self.cfg.seed)
        return self.model.derive("argmax", weights=weights), extra

    def _decisions(self) -> list[Decision] | None:
        try:
            return self.model.decisions(self.cfg.derive)
        except SldartsError:  # a user space without margins
            return None

    def measure(self) -> dict[str, Any]:
        arch = self._derive()
        row = {**self._scores(self.data.eval, "valid"), **self.model.alpha_state(),
               self.space.arch_key: arch, "param_free_ratio": self.model.param_free_ratio(arch)}
        decisions = self._decisions()
        if decisions is not None:
            row.update(margins(decisions))
        if self.benchmark is not None:
            row["benchmark"] = self.benchmark.query(arch)
        if self.cost is not None:
            row.update(self.cost.row(self.model))
        if self.probe is not None:
            row["analysis_seconds"] = round(self.probe.seconds, 3)
            self.probe.seconds = 0.0
        return row

    def _scores(self, loader, split: str) -> dict[str, float]:
        """valid_acc (classification) or valid_loss (loss=), and valid_metric (metric=); test_* alike."""
        out = ({f"{split}_acc": accuracy(self.model, loader)[0]} if self._loss is None
               else {f"{split}_loss": evaluate(self.model, loader, self._loss)})
        if self._metric is not None:
            out[f"{split}_metric"] = evaluate(self.model, loader, self._metric)
        return out

    def summary_line(self, row: dict[str, Any]) -> str:
        key = self.space.arch_key
        extra = ""
        if "analysis_seconds" in row and row.get("seconds"):
            a = row["analysis_seconds"]
            extra = f" (analysis {a:.1f}s of it, +{a / max(row['seconds'] - a, 1e-9):.0%})"
        margin = f" min-margin {row['min_margin']:.2g}" if row.get("min_margin") is not None else ""
        valid = (f"valid {row['valid_acc']:.2%}" if "valid_acc" in row else f"valid loss {row['valid_loss']:.4g}")
        valid += f" metric {row['valid_metric']:.4g}" if "valid_metric" in row else ""
        if self.cost is not None:
            from sldarts.budget import fmt

            k = self.cfg.cost
            margin += f" cost: expected {fmt(k, row['expected_cost'])} derived {fmt(k, row['derived_cost'])}"
        return (f"{valid} param-free {row['param_free_ratio']:.2f}{margin} "
                f"{key} {json.dumps(row[key])}{extra}")

    def result(self, seconds: float, last: dict[str, Any] | None) -> dict[str, Any]:
        cfg = self.cfg
        selector = self.method.selector
        arch, extra = self._select(selector) if selector is not None else (self._derive(), {})
        ratio = self.model.param_free_ratio(arch)
        out: dict[str, Any] = {"space": cfg.space, "arch_key": self.space.arch_key, self.space.arch_key: arch,
                               "param_free_ratio": ratio, "derive": cfg.derive, **extra,
                               "valid_acc": last.get("valid_acc") if last else None, "epochs": cfg.epochs,
                               **({"stopped_early": {"epoch": self.epoch, "reason": self.early_stop()}}
                                  if self.epoch < cfg.epochs else {}),
                               **{k: last[k] for k in ("valid_loss", "valid_metric") if last and k in last},
                               "seconds": round(seconds, 1), "input": self.data.input_spec()}
        if self.benchmark is not None:
            out["benchmark"] = self.benchmark.query(arch)
        if self.data.test is not None:  # once, at the end: never a selection number
            out.update(self._scores(self.data.test, "test"))
        decisions = self._decisions() if selector is None else None  # RSPS decides by scores, not α
        if decisions is not None:
            out.update(margins(decisions))
        if self.dist.main:
            out["complexity"] = self._complexity(arch)
            if self.cost is not None:
                out["budget"] = self.cost.result(self.model, arch)
                if self.cost.model.latency is not None:
                    self.cost.model.latency.save()
            out.update(stability(read_metrics(self.out / "metrics.jsonl"), self.space.arch_key, cfg.epochs))
            said = note(decisions or [], cfg.margin_threshold, out)
            if said:
                out["note"] = said
        if ratio > cfg.param_free_threshold:
            out["warning"] = (
                f"parameter-free ratio {ratio:.2f} exceeds {cfg.param_free_threshold}: the search may have "
                f"collapsed; the paper advises a lower weight learning rate (lr={cfg.lr:g} now, try "
                f"lr={cfg.lr / cfg.auto_lr_factor:g}, or auto_lr=true)")
        return out

    def _complexity(self, arch: Any) -> dict[str, Any] | None:
        """Params and MACs of the derived architecture's evaluation network: for built-in spaces on the
        published setting of its data set (CIFAR-10's for data sets without one), for user models on the
        searched data's shape."""
        from sldarts.evaluate.complexity import complexity, summary

        try:
            ds = self.space.complexity_dataset(self.cfg.dataset)
            if ds is not None:
                return {"dataset": ds, **complexity(self.space, arch, ds)}
            info = self.data.info
            net = eval_network_for(self.space, arch, info.num_classes, info.in_channels,
                                   self.data.sample_shape[-1], dataset=self.cfg.dataset)
            return {"dataset": self.cfg.dataset, **summary(net, self.data.sample_shape)}
        except SldartsError:  # a space without an evaluation network
            return None

    def artifacts(self, result: dict[str, Any]) -> dict[str, str]:
        return self.space.artifacts(result[self.space.arch_key])

    def figures(self, row: dict[str, Any]) -> dict[str, Any]:
        from sldarts.loggers import heatmaps

        return heatmaps(row.get("weights", {}), self.space.labels)

    def final_figures(self) -> dict[str, Any]:
        from sldarts.loggers import png

        return {f"cell/{p.stem}": png(p) for p in sorted(self.out.glob("cell_*.png"))}

    def on_finish(self, result: dict[str, Any]) -> None:
        from sldarts.plot import plot_cells

        if self._user_model is not None:  # no factory to rebuild it from: save the fixed network itself
            from sldarts.export import PROGRAM, save_program
            from sldarts.nn import fix

            try:
                save_program(fix(self.model.model, result[self.space.arch_key]).float().cpu(), self.data.sample_shape,
                             self.out / PROGRAM)
            except SldartsError as exc:
                self.progress.message(f"{PROGRAM} not written ({exc}); sldarts.load needs space=pkg.mod:build")

        try:
            drawn = plot_cells(self.space, result[self.space.arch_key], self.out / "cell", formats=("png",))
            claim(self.out, [p.name for p in drawn])
        except (SldartsError, OSError) as exc:
            self.progress.message(f"cell diagram not drawn: {exc}")
        for line in closing_lines(self.cfg, self.space, result, self.out):
            self.progress.message(line)


def closing_lines(cfg: SearchConfig, space: SearchSpace, result: dict[str, Any], out: Path) -> list[str]:
    """The end of a search, for someone who just ran their first: the result (cell, benchmark look-up, size),
    then at most three short lines (collapse warning, undecided choices, next commands that run as printed)."""
    arch = result[space.arch_key]
    lines = [f"result: {space.format(arch)}"]
    bench = result.get("benchmark") or {}
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16-120": "ImageNet16-120"}
    looked = [f"{name} {bench[d]['test']:.2f}" for d, name in names.items()
              if isinstance(bench.get(d), dict) and bench[d].get("test") is not None]
    if looked:
        lines.append("  NAS-Bench-201 test accuracy: " + ", ".join(looked))
    size = result.get("complexity")
    facts = [f"{size['params_m']:.2f}M params, {size['macs_m']:.1f}M MACs ({size['dataset']} network)"] if size else []
    facts.append(f"parameter-free share {result['param_free_ratio']:.2f}")
    facts += [f"diagram {p}" for p in sorted(out.glob("cell_*.png"))[:1]]
    lines.append("  " + "; ".join(facts))
    if result.get("budget"):
        from sldarts.budget import budget_line

        lines.append(budget_line(result["budget"]))
    if result["param_free_ratio"] > cfg.param_free_threshold:
        lines.append(f"warning: the search may have collapsed (parameter-free share {result['param_free_ratio']:.2f} > "
                     f"{cfg.param_free_threshold:g}); try lr={cfg.lr / cfg.auto_lr_factor:g} or auto_lr=true")
    margins = result.get("margins") or {}
    weak = sum(m < cfg.margin_threshold for m in margins.values())
    if weak:
        lines.append(f"undecided: {weak} of {len(margins)} choices (margin < {cfg.margin_threshold:g}); "
                     f"the list is in {out / 'result.json'}")
    nxt = []
    if bench:
        given = f" --benchmark {cfg.benchmark}" if cfg.benchmark else ""  # else $SLDARTS_NB201, set in this shell
        nxt.append(f"sldarts lookup {out}{given} --table")
    nxt.append(f"sldarts analyze {out} --out {out / 'figures'}")
    if space.arch_key == "choices":
        nxt.append(f"sldarts export {out} --format torchscript --out {out / 'model.pt'}")
    lines.append("next: " + " | ".join(nxt))
    return lines


def search(config: SearchConfig | None = None, *, model: torch.nn.Module | None = None, train_data: Any = None,
           valid_data: Any = None, test_data: Any = None, **overrides: Any) -> dict[str, Any]:
    """Python API: ``sldarts.search(space="nb201", epochs=1)`` runs a search and returns its result.

    ``model``: any ``nn.Module`` with :mod:`sldarts.nn` choices (searched in place: its weights are the
    supernet's); ``train_data``/``valid_data``/``test_data``: map-style datasets of ``(tensor, int)``
    (without ``valid_data``, ``valid_split`` of ``train_data`` is held out for valid_acc; ``test_data`` is
    measured once at the end as test_acc). Every other keyword is a config key."""
    # without a config the defaults that depend on others (lr on space) are resolved after the overrides
    base = config.to_dict() if config is not None else {}
    cfg = config or SearchConfig()
    if model is not None and "space" not in overrides:
        overrides["space"] = f"<model:{type(model).__name__}>"
    if train_data is not None and "dataset" not in overrides:
        overrides["dataset"] = f"<dataset:{type(train_data).__name__}>"
    fns = {}
    for key in ("loss", "metric"):  # a Python callable: recorded by name, passed to the run as the object
        if callable(overrides.get(key)):
            fns[key] = overrides[key]
            overrides[key] = f"<{key}:{getattr(fns[key], '__name__', type(fns[key]).__name__)}>"
    if overrides:
        cfg = load_config(None, overrides, base=base)
    objects = dict(model=model, train_data=train_data, valid_data=valid_data, test_data=test_data, **fns)
    if cfg.pdarts:  # P-DARTS: the stages as searches of their own (sldarts.stages)
        from sldarts.stages import pdarts_search

        return pdarts_search(cfg, SearchRun, **objects)
    return auto_lr_search(cfg, **objects) if cfg.auto_lr else SearchRun(cfg, **objects).run()


def auto_lr_search(cfg: SearchConfig, **objects: Any) -> dict[str, Any]:
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
        result = SearchRun(sub, **objects).run()
        key = result["arch_key"]
        tries.append({"try": t, "lr": lr, "param_free_ratio": result["param_free_ratio"], key: result[key],
                      "run_dir": str(base / f"try{t}")})
        ckpt.atomic_write_text(base / "auto_lr.json", json.dumps(tries, indent=1) + "\n")
        if result["param_free_ratio"] <= cfg.param_free_threshold:
            break
        lr = lr / cfg.auto_lr_factor
    result = dict(result, auto_lr=tries)
    ckpt.atomic_write_text(base / "result.json", json.dumps(result, indent=1) + "\n")
    return result
