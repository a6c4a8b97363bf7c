"""Search configuration: one typed dataclass, filled from YAML and ``key=value`` overrides.

Every value is checked here, once, so the rest of the code can trust it; each problem becomes a
one-line :class:`SldartsError` that names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sldarts.budget_options import CostOptions, check_options
from sldarts.errors import SldartsError

ARCH_DATA = ("valid", "train")
ARCH_OPTIMIZERS = ("adam", "sgd")
PROGRESS = ("auto", "bar", "lines", "none")
AMP = ("none", "bf16")  # bf16 needs no loss scaling; fp16 would, so it is not offered


def _choice(*options: str) -> dict:
    return {"choices": options}


INT_MAX = 2**63 - 1  # what torch and numpy take as a size or count


def _check_number(name: str, value: Any) -> None:
    """Every float finite (``nan < lo`` is false, so a range alone lets NaN through) and every int within what
    the libraries underneath accept."""
    if isinstance(value, float) and not math.isfinite(value):
        raise SldartsError(f"config: {name}={value} is not a finite number; give a finite value")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT_MAX:
        raise SldartsError(f"config: {name}={value} is out of range: must be <= {INT_MAX}")


def _registered(kind: str) -> dict:
    """Choices read from a plug-in registry when validating (so a registered plug-in is a valid value)."""
    def names() -> tuple[str, ...]:
        if kind == "activation":
            from sldarts.activations import ACTIVATIONS

            return tuple(ACTIVATIONS.names())
        from sldarts.strategies import optims

        return optims()

    return {"choices": names}


def _check_loggers(value: str) -> None:
    from sldarts.loggers import LOGGERS, names

    for name in names(value):
        if name not in LOGGERS:
            raise SldartsError(f"config: logger={name!r} is not one of {', '.join(LOGGERS)}"
                               + _suggest(name, LOGGERS))


def _check_resume(value: bool | str) -> None:
    if isinstance(value, str) and value != "auto":
        raise SldartsError(f"config: resume={value!r} must be true, false or auto")


def _check_space(value: str) -> None:
    from sldarts.registry import is_import_path
    from sldarts.spaces import SPACES, get_space

    if value.startswith("<") or value in SPACES or is_import_path(value):
        get_space(value) if not value.startswith("<") else None
        return
    raise SldartsError(f"config: space={value!r} is not one of {', '.join(SPACES)} nor an import path "
                       "(pkg.module:build or file.py:build)" + _suggest(value, SPACES))


def _check_dataset(value: str) -> None:
    from sldarts.data import DATASETS
    from sldarts.registry import is_import_path

    if value.startswith("<") or value in DATASETS or is_import_path(value):
        return
    raise SldartsError(f"config: dataset={value!r} is not one of {', '.join(DATASETS)} nor an import path "
                       "(pkg.module:build or file.py:build returning (train, test) datasets)"
                       + _suggest(value, DATASETS))


LOSSES = ("cross_entropy", "mse", "l1", "bce")  # built-in names of loss= (and metric=); else pkg.mod:fn


def _check_callable(key: str):
    def check(value: str) -> None:
        from sldarts.registry import is_import_path

        if value and not (value in LOSSES or value.startswith("<") or is_import_path(value)):
            raise SldartsError(f"config: {key}={value!r} is not one of {', '.join(LOSSES)} nor an import path "
                               "(pkg.module:fn or file.py:fn taking (outputs, labels))" + _suggest(value, LOSSES))
    return check


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict:
    return {"range": (lo, hi, lo_open)}


class ConfigBase:
    """Typed, validated settings: coercion, choices and ranges come from the dataclass fields."""

    def validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = _coerce(f.name, getattr(self, f.name), hints[f.name])
            setattr(self, f.name, value)
            meta = f.metadata
            choices = meta.get("choices")
            choices = choices() if callable(choices) else choices
            if choices is not None and value not in choices:
                raise SldartsError(
                    f"config: {f.name}={value!r} is not one of {', '.join(choices)}"
                    + _suggest(str(value), choices)
                )
            if "check" in meta and value is not None:
                meta["check"](value)
            _check_number(f.name, value)
            if "range" in meta and value is not None:
                lo, hi, lo_open = meta["range"]
                if lo is not None and (value < lo or (lo_open and value == lo)):
                    raise SldartsError(
                        f"config: {f.name}={value} is out of range: must be {'>' if lo_open else '>='} {lo}"
                    )
                if hi is not None and value > hi:
                    raise SldartsError(f"config: {f.name}={value} is out of range: must be <= {hi}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the run options (seed, device, files...) last so config.yaml reads top-down."""
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        tail = [f.name for f in dataclasses.fields(RunOptions)] if isinstance(self, RunOptions) else []
        if isinstance(self, CostOptions):  # the budget keys (sldarts.budget) after the search's own
            tail = [f.name for f in dataclasses.fields(CostOptions)] + tail
        return {**{k: v for k, v in d.items() if k not in tail}, **{k: d[k] for k in tail}}

    def replace(self, **changes: Any):
        """A copy with ``changes``; every current value counts as given (a preset never overrides it again),
        unless ``changes`` names another method, whose preset then fills the keys left at their defaults."""
        return load_config(None, changes, base=self.to_dict(), schema=type(self),
                           base_explicit="method" not in changes)


@dataclass
class RunOptions(ConfigBase):
    """How a run executes (shared by search and retraining): seed, device, files, progress, faults."""

    seed: int = field(default=0, metadata={**_range(0),
        "help": "random seed of weights, α, data order and augmentation; CPU runs with one seed are reproducible"})
    deterministic: bool = field(default=False, metadata={
        "help": "also force deterministic kernels (torch.use_deterministic_algorithms); slower on GPU"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA if present, else CPU), cpu, cuda or cuda:N"})
    amp: str = field(default="none", metadata={**_choice(*AMP),
        "help": "bf16 autocasts the forward pass on GPU (no loss scaling needed); none keeps float32"})
    channels_last: bool = field(default=True, metadata={
        "help": "NHWC model and batches: faster (depthwise) convolutions on CPU and GPU"})
    workers: int = field(default=4, metadata={**_range(0),
        "help": "processes that decode streamed image folders and ImageNet"})
    threads: int = field(default=0, metadata={**_range(0), "help": "CPU threads for torch (0: torch's default)"})
    log_every: int = field(default=20, metadata={**_range(1),
        "help": "steps between progress lines and logged step metrics"})
    progress: str = field(default="auto", metadata={**_choice(*PROGRESS),
        "help": "auto: a bar on a terminal, plain lines otherwise; bar, lines or none"})
    out: str = field(default="", metadata={
        "help": "the run directory (empty: runs/<run name>); one holding another run is refused"})
    # (what a requeued Slurm job and `torchrun --max-restarts` need: they run the very same command again)
    resume: bool | str = field(default=False, metadata={"check": lambda v: _check_resume(v),
        "help": "true/auto: continue the run the directory holds, or start one where it holds none"})
    overwrite: bool = field(default=False, metadata={"help": "replace a run directory that holds another run"})
    lock_wait: float = field(default=0.0, metadata={**_range(0), "help": "seconds to wait for another process "
                             "writing the same run directory to end (0: refuse at once, naming it)"})
    nan_policy: str = field(default="stop", metadata={**_choice("stop", "skip"),
        "help": "at a non-finite loss: stop (keeping the last good checkpoint) or skip the batch and count it"})
    logger: str = field(default="", metadata={"check": lambda v: _check_loggers(v),
        "help": "mirror metrics to tensorboard, wandb and/or mlflow (comma-separated; empty: none)"})


@dataclass
class SearchConfig(RunOptions, CostOptions):
    """All settings of one search; defaults follow the paper (Sec. 4.1, 4.2)."""

    space: str = field(default="nb201", metadata={"check": _check_space,
        "help": "nb201, darts, a registered space, or pkg.mod:obj / file.py:obj (a SearchSpace or model factory)"})
    dataset: str = field(default="digits", metadata={"check": _check_dataset,
        "help": "digits, cifar10, cifar100, imagenet16-120, imagefolder, imagenet, or pkg.mod:build for your own"})
    data_root: str = field(default="data", metadata={"help": "the folder that holds the data set's files"})
    image_size: int = field(default=0, metadata={**_range(0),
        "help": "side of the crop fed to the network: shorter side resized, then centre-cropped "
                "(0: the first image's shorter side)"})
    valid_split: float | None = field(default=None, metadata={**_range(0, 0.9), "help": (
        "share of the training images held out (stratified, the same for every seed) for valid_acc where the "
        "data has no validation split (empty: 0.1; 0: valid_acc on the training images); never the test split")})
    stem: str = field(default="auto", metadata={**_choice("auto", "cifar", "imagenet"),
        "help": "search network stem: cifar (full resolution), imagenet (stride-2 reduction), "
                "auto from the searched images' side"})
    loss: str = field(default="", metadata={"check": _check_callable("loss"), "help": (
        "the training loss fn(outputs, labels): mse, l1, bce, cross_entropy or pkg.mod:fn (labels of any shape); "
        "empty: cross-entropy on class indices")})
    metric: str = field(default="", metadata={"check": _check_callable("metric"), "help": (
        "a number to report as valid_metric/test_metric, fn(outputs, labels) -> batch mean; same names as loss")})
    cache_limit_mb: int = field(default=2048, metadata={**_range(0),
        "help": "image folders larger than this when decoded stream from disk instead of memory"})
    optim: str = field(default="single", metadata={**_registered("optim"),
        "help": "single (w and α from the same batch, the paper) or bilevel (DARTS), or a registered strategy"})
    order: int = field(default=1, metadata={**_range(1, 2),
        "help": "bi-level only: 1 first order, 2 second order (unrolled, finite-difference Hessian-vector product)"})
    arch_data: str = field(default="valid", metadata={**_choice(*ARCH_DATA),
        "help": "bi-level only: α batches from the held-out split (valid) or another training batch (train)"})
    activation: str = field(default="sigmoid", metadata={**_registered("activation"),
        "help": "how α becomes op weights: sigmoid (the paper), softmax (DARTS), gumbel, dirichlet, ..."})
    alpha_init: float | None = field(default=None, metadata={
        "help": "α's initial value (empty: -ln(n-1) for sigmoid, N(0, 1e-3²) for softmax)"})
    epochs: int = field(default=50, metadata={**_range(1), "help": "search epochs"})
    batch_size: int = field(default=64, metadata={**_range(1),
        "help": "images per step (the global batch, split over torchrun ranks)"})
    lr: float | None = field(default=None, metadata={**_range(0, lo_open=True),
        "help": "weight learning rate, cosine to lr_min (empty: the space's, 0.005 on nb201, 0.025 on darts)"})
    lr_min: float = field(default=0.001, metadata={**_range(0),
        "help": "the cosine schedule's final weight learning rate (at most lr)"})
    momentum: float = field(default=0.9, metadata={**_range(0, 1), "help": "weight SGD momentum"})
    weight_decay: float = field(default=3e-4, metadata={**_range(0), "help": "weight SGD weight decay"})
    grad_clip: float = field(default=5.0, metadata={**_range(0),
        "help": "clip the weights' gradient norm to this (0: no clipping)"})
    arch_optimizer: str = field(default="adam", metadata={**_choice(*ARCH_OPTIMIZERS),
        "help": "optimiser of α: adam (arch_beta1, arch_beta2) or sgd (arch_momentum)"})
    arch_lr: float = field(default=3e-4, metadata={**_range(0, lo_open=True), "help": "α's learning rate"})
    arch_beta1: float = field(default=0.5, metadata={**_range(0, 1), "help": "Adam β1 of α"})
    arch_beta2: float = field(default=0.999, metadata={**_range(0, 1), "help": "Adam β2 of α"})
    arch_momentum: float = field(default=0.9, metadata={**_range(0, 1),
        "help": "SGD momentum of α (arch_optimizer=sgd)"})
    arch_weight_decay: float | None = field(default=None, metadata={**_range(0),
        "help": "α's weight decay (empty: 0 for sigmoid, 1e-3 otherwise, as DARTS, GDAS and DrNAS)"})
    unroll_r: float = field(default=0.01, metadata={**_range(0, lo_open=True),
        "help": "finite-difference step of the second-order hypergradient (DARTS's r)"})
    train_portion: float = field(default=0.5, metadata={**_range(0, 1, lo_open=True),
        "help": "bi-level: share of the training set that updates w; the rest updates α"})
    data_fraction: float = field(default=1.0, metadata={**_range(0, 1, lo_open=True),
        "help": "use this share of the training set (0.5: the paper's half-data single-level runs)"})
    train_samples: int = field(default=0, metadata={**_range(0),
        "help": "cap the training images (0: all); for smoke runs"})
    eval_samples: int = field(default=0, metadata={**_range(0),
        "help": "cap the evaluation images (0: all); for smoke runs"})
    augment: bool = field(default=True, metadata={
        "help": "random crop with padding, plus horizontal flip except on digits"})
    channels: int = field(default=16, metadata={**_range(1), "help": "initial channels C of the supernet"})
    cells: int = field(default=0, metadata={**_range(0),
        "help": "cells N (0: the space's default, nb201 5 per stage, darts 8 in total)"})
    bn_track_stats: bool = field(default=True, metadata={
        "help": "keep running statistics in the supernet's non-affine batch norms"})
    impl: str = field(default="fused", metadata={**_choice("fused", "reference"),
        "help": "fused (shared ReLU/pooling, stacked convs: same function, faster) or reference (per-edge loop)"})
    param_free_threshold: float = field(default=0.3, metadata={**_range(0, 1),
        "help": "warn (and auto_lr retries) when more than this share of the chosen ops is parameter-free"})
    derive: str = field(default="argmax", metadata={**_choice("argmax", "argmax-no-none"),
        "help": "argmax, or argmax-no-none (never derive `none`)"})
    # one-shot methods (docs/methods.md); `method` names a preset of the keys below, expanded by load_config
    method: str = field(default="", metadata={"check": lambda v: _check_method(v),
        "help": "a one-shot method preset (darts, gdas, drnas, pcdarts, ...) that sets the keys below; see methods"})
    tau_max: float = field(default=10.0, metadata={**_range(0, lo_open=True),
        "help": "GDAS: Gumbel temperature at the start, linear down to tau_min"})
    tau_min: float = field(default=0.1, metadata={**_range(0, lo_open=True),
        "help": "GDAS: Gumbel temperature at the end"})
    kl_weight: float = field(default=1e-3, metadata={**_range(0),
        "help": "DrNAS: weight of the KL divergence to the Dirichlet prior"})
    partial_channels: int = field(default=1, metadata={**_range(1),
        "help": "PC-DARTS: mixed ops see 1/K of the channels (1: all)"})
    edge_norm: bool = field(default=False, metadata={
        "help": "PC-DARTS: per-edge β, softmax over a node's incoming edges"})
    zero_one_weight: float = field(default=0.0, metadata={**_range(0),
        "help": "FairDARTS: weight of the zero-one loss on the op weights"})
    aux_skip: bool = field(default=False, metadata={
        "help": "DARTS-: auxiliary skip connection on every edge, coefficient decayed 1 -> 0"})
    rsps_samples: int = field(default=100, metadata={**_range(1), "help": "RSPS: architectures scored at the end"})
    rsps_batches: int = field(default=1, metadata={**_range(1),
        "help": "RSPS: validation batches each architecture is scored on"})
    beta_weight: float = field(default=0.0, metadata={**_range(0), "help": "β-DARTS: final weight of the "
                               "beta-decay loss mean(logsumexp α), growing linearly from 0 over the epochs"})
    sdarts_epsilon: float = field(default=0.0, metadata={**_range(0, 1), "help": "SDARTS-RS: final bound of "
                                  "the uniform noise on the weight step's op weights (0.03 -> it, linearly)"})
    dartsplus_max_skips: int = field(default=0, metadata={**_range(0), "help": "DARTS+: stop once the derived "
                                     "normal cell has this many skip connections (0: off; the paper: 2)"})
    dartsplus_patience: int = field(default=0, metadata={**_range(0), "help": "DARTS+: stop once the op each "
                                    "edge ranks first has not changed for this many epochs (0: off; the paper: 10)"})
    dropnas_rate: float = field(default=0.0, metadata={**_range(0, 1), "help": "DropNAS: p_d, the probability "
                                "that a whole op group of an edge would drop; each op drops with p_d^(1/group "
                                "size), a fully dropped group is drawn again (the paper: 3e-5)"})
    setn_samples: int = field(default=0, metadata={**_range(0), "help": "SETN: templates drawn from α's "
                              "distribution and scored at the end (0: off; its preset: 100)"})
    setn_batches: int = field(default=1, metadata={**_range(1),
                              "help": "SETN: validation batches each template is scored on"})
    setn_select: str = field(default="sample", metadata={**_choice("sample", "top"), "help": (
        "SETN: sample (templates drawn from α, all scored on the same batches) or top (the most probable "
        "under α, each on batches of its own, as AutoDL-Projects' SETN; one op per choice, e.g. nb201)")})
    enas_samples: int = field(default=10, metadata={**_range(1), "help": "ENAS: controller samples scored at the end"})
    enas_batches: int = field(default=1, metadata={**_range(1),
                              "help": "ENAS: validation batches each sample is scored on"})
    enas_lr: float = field(default=0.001, metadata={**_range(0, lo_open=True), "help": "ENAS: controller Adam lr"})
    enas_entropy: float = field(default=1e-4, metadata={**_range(0),
                                "help": "ENAS: weight of the controller's entropy bonus"})
    enas_baseline_decay: float = field(default=0.95, metadata={**_range(0, 1),
                                       "help": "ENAS: decay of the reward's moving-average baseline"})
    arch_warmup: int = field(default=0, metadata={**_range(0), "help": "epochs at the start in which α is not "
                             "updated, only the weights (PC-DARTS's recipe: 15)"})
    pdarts: bool = field(default=False, metadata={
        "help": "P-DARTS: progressive search in stages (pdarts_cells), ops pruned between stages, skip dropout"})
    pdarts_cells: str = field(default="5,11,17", metadata={
        "help": "P-DARTS: cells of each stage's supernet, comma-separated (each stage runs `epochs` epochs)"})
    pdarts_keep: str = field(default="5,3", metadata={
        "help": "P-DARTS: ops kept per edge after each stage but the last (by activated weight)"})
    pdarts_skip_drop: str = field(default="0.1,0.4,0.7", metadata={
        "help": "P-DARTS: dropout rate on skip connections at the start of each stage (decays over its epochs)"})
    pdarts_max_skip: int = field(default=2, metadata={**_range(0),
        "help": "P-DARTS: most skip connections in the final normal cell (M)"})
    parts: str = field(default="", metadata={"help": "more method parts, comma-separated: registered names or "
                       "import paths (pkg.mod:Part, file.py:Part); their options are keys too (docs/custom.md)"})
    part_options: dict = field(default_factory=dict, metadata={
        "help": "options of the parts named in `parts` (given as plain keys; checked when the search starts)"})
    margin_threshold: float = field(default=0.01, metadata={**_range(0),
        "help": "a choice whose winner leads the runner-up by less than this is reported undecided"})
    analysis: bool = field(default=False, metadata={
        "help": "record gradient correlation, dL/dp and op weights to analysis.jsonl (see analysis)"})
    analysis_every: int = field(default=10, metadata={**_range(1), "help": "steps between analysis records"})
    analysis_cells: str = field(default="first,middle,last", metadata={
        "help": "cells the analysis probes: comma-separated first, middle, last or indices"})
    auto_lr: bool = field(default=False, metadata={
        "help": "rerun with lr / auto_lr_factor while the result's parameter-free share exceeds the threshold"})
    auto_lr_factor: float = field(default=5.0, metadata={**_range(1, lo_open=True),
        "help": "auto_lr: divide lr by this on each retry"})
    auto_lr_tries: int = field(default=3, metadata={**_range(1), "help": "auto_lr: at most this many searches"})
    benchmark: str = field(default="", metadata={
        "help": "NAS-Bench-201 file for per-epoch look-ups (empty: $SLDARTS_NB201, else the shipped table)"})
    trust: bool = field(default=False, metadata={"help": "let a pickled benchmark file (NATS-Bench, .pth) load "
                                                 "any Python object; off: only plain data is read, since "
                                                 "unpickling other objects runs code"})
    sync_bn: bool = field(default=False, metadata={"help": "batch norm over the global batch of all torchrun "
                                                   "processes (as one process computes it), not per process; "
                                                   "runs the reference cells"})

    # the searched images' side, set by the run once its data is read (stem=auto follows it; not a key)
    input_side: typing.ClassVar[int] = 0

    def __post_init__(self) -> None:
        self.validate()
        if self.lr is None:  # the space's default (the paper: 0.005 on NB201, 0.025 on DARTS)
            self.lr = self.search_space().default_lr if not self.space.startswith("<") else 0.025
        # set by sldarts.methods.resolve when a search starts: options of parts the run does not use,
        # left out of config.yaml (it records what ran); resolve also sets impl to the cells that compute it
        self._unused_keys: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k not in self._unused_keys}

    # -- derived values ---------------------------------------------------------------------
    def search_space(self):
        """The :class:`sldarts.spaces.SearchSpace` that ``space`` names."""
        from sldarts.spaces import get_space

        return get_space(self.space)

    @property
    def num_cells(self) -> int:
        """``cells``, or the space's default (NB201: 5 per stage; DARTS: 8 in total)."""
        return self.search_space().num_cells(self.cells)

    @property
    def arch_wd(self) -> float:
        """The paper: 0 for sigmoid (no extra pull towards `none`); 1e-3 otherwise, as DARTS, GDAS and
        DrNAS set it."""
        if self.arch_weight_decay is not None:
            return self.arch_weight_decay
        return 0.0 if self.activation == "sigmoid" else 1e-3

    @property
    def run_name(self) -> str:
        opt = self.optim if self.optim == "single" else f"bilevel{self.order}-{self.arch_data}"
        name = self.method or self.activation
        return f"{self.space}-{self.dataset}-{opt}-{name}-lr{self.lr:g}-s{self.seed}"

    def validate(self) -> None:
        super().validate()
        if self.tau_min > self.tau_max:
            raise SldartsError(f"config: tau_min={self.tau_min} exceeds tau_max={self.tau_max}")
        if self.optim != "bilevel" and self.order != 1:
            raise SldartsError(f"config: order=2 needs optim=bilevel ({self.optim} has no unrolled step)")
        if self.order == 2 and self.arch_data == "train":
            raise SldartsError("config: order=2 with arch_data=train is not a setting of the paper; use order=1")
        check_options(self)
        _check_applies(self)


def _check_applies(cfg: SearchConfig) -> None:
    """A data-split key that the chosen optimisation would silently ignore is refused."""
    if cfg.optim != "bilevel" and cfg.arch_data != "valid":
        raise SldartsError(f"config: arch_data={cfg.arch_data} applies to optim=bilevel only ({cfg.optim} updates "
                           "α on the training batches); drop it or set optim=bilevel")
    if not (cfg.optim == "bilevel" and cfg.arch_data == "valid") and cfg.train_portion != 0.5:
        raise SldartsError(f"config: train_portion={cfg.train_portion} splits the data only for optim=bilevel "
                           f"arch_data=valid (optim={cfg.optim} arch_data={cfg.arch_data} uses all of it); "
                           "drop it, or use data_fraction to search on less data")


# method= presets: the keys each method sets (docs/methods.md). Keys given explicitly win, so a preset
# combines with optim=single (single-level GDAS, single-level PC-DARTS, ...).
METHODS: dict[str, dict[str, Any]] = {
    "single-darts": dict(optim="single", activation="sigmoid"),  # the paper (Hou & Jin)
    "darts": dict(optim="bilevel", order=2, activation="softmax"),  # Liu et al., ICLR 2019
    "gdas": dict(optim="bilevel", order=1, activation="gumbel"),  # Dong & Yang, CVPR 2019
    "drnas": dict(optim="bilevel", order=1, activation="dirichlet"),  # Chen et al., ICLR 2021
    "pcdarts": dict(optim="bilevel", order=1, activation="softmax", partial_channels=4, edge_norm=True),  # Xu et al.
    "fairdarts": dict(optim="bilevel", order=1, activation="sigmoid", zero_one_weight=10.0),  # Chu et al., ECCV 2020
    "darts-minus": dict(optim="bilevel", order=1, activation="softmax", aux_skip=True),  # Chu et al., ICLR 2021
    "rsps": dict(optim="rsps"),  # Li & Talwalkar, UAI 2019
    "betadarts": dict(optim="bilevel", order=1, activation="softmax", beta_weight=50.0),  # Ye et al., CVPR 2022
    "sdarts": dict(optim="bilevel", order=1, activation="softmax", sdarts_epsilon=0.3),  # Chen & Hsieh, ICML 2020
    "pdarts": dict(optim="bilevel", order=1, activation="softmax", pdarts=True, arch_warmup=10),  # Chen et al., 2019
    "dartsplus": dict(optim="bilevel", order=1, activation="softmax", dartsplus_max_skips=2,
                      dartsplus_patience=10),  # Liang et al., 2019
    "dropnas": dict(optim="single", activation="softmax", dropnas_rate=3e-5),  # Hong et al., IJCAI 2020
    "setn": dict(optim="bilevel", order=1, activation="softmax", setn_samples=100),  # Dong & Yang, NeurIPS 2019
    "enas": dict(optim="enas"),  # Pham et al., ICML 2018
}


def _check_method(value: str) -> None:
    if value and value not in METHODS:
        raise SldartsError(f"config: method={value!r} is not one of {', '.join(METHODS)}" + _suggest(value, METHODS))


def expand_method(values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Fill in the keys of ``values["method"]``'s preset that were not given explicitly."""
    method = values.get("method")
    if not method:
        return values
    _check_method(str(method))
    preset = METHODS[str(method)]
    if "optim" in explicit and preset.get("optim", values["optim"]) != values["optim"]:
        why = {"rsps": "RSPS trains sampled architectures and no α",
               "enas": "ENAS trains sampled architectures and a controller by REINFORCE, no α"}
        for opt in (values["optim"], preset.get("optim")):
            if opt in why:
                raise SldartsError(f"config: method={method} with optim={values['optim']} makes no sense: "
                                   f"{why[opt]}; use one or the other")
    out = dict(values)
    for k, v in preset.items():
        if k not in explicit:
            out[k] = v
    if out.get("optim") == "single" and "order" not in explicit:
        out["order"] = 1  # single-level has no unrolled step: a bi-level preset's order does not apply
    return out


def _suggest(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Turn a YAML/CLI value into the field's type, or say which type was expected."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise SldartsError(f"config: {name} must not be empty")
    for kind in allowed:
        if kind is type(None):
            continue
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
                return value.lower() in ("true", "yes", "1")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
        elif kind in (int, float):
            if isinstance(value, bool):
                continue
            if kind is int and isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, kind) or (kind is float and isinstance(value, int)):
                return kind(value)
            if isinstance(value, str):
                try:
                    return kind(value)
                except ValueError:
                    pass
        elif kind is str:
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                return str(value)
        elif kind is dict and isinstance(value, dict):
            return value
    expected = " or ".join(getattr(k, "__name__", str(k)) for k in allowed)
    raise SldartsError(f"config: {name}={value!r} has the wrong type: expected {expected}")


def parse_overrides(items: typing.Sequence[str]) -> dict[str, Any]:
    """``["lr=0.005", "activation=sigmoid"]`` -> dict; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SldartsError(f"override {item!r} is not key=value (e.g. lr=0.005)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dict, list)):
            value = raw
        out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    from sldarts.shipped import find_config

    p = find_config(path)  # a file, or the name of a shipped config
    if not p.is_file():
        raise SldartsError(f"config file {p} does not exist; pass an existing YAML file to --config, or the "
                           "name of a shipped one (sldarts configs lists them)")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SldartsError(f"config file {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SldartsError(f"config file {p} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def load_config(
    path: str | Path | None,
    overrides: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
    schema: type = SearchConfig,
    base_explicit: bool = False,
) -> Any:
    """Defaults < base < YAML file < overrides; unknown keys get a 'did you mean'. ``base_explicit``: every
    key of ``base`` counts as given, so a ``method`` preset does not override it (a config's copy)."""
    values: dict[str, Any] = dict(base or {})
    defaults = {f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                for f in dataclasses.fields(schema)}
    explicit = set(values) if base_explicit else {k for k, v in values.items() if defaults.get(k, object()) != v}
    if path is not None:
        values.update(read_yaml(path))
        explicit |= set(read_yaml(path))
    values.update(overrides or {})
    explicit |= set(overrides or {})
    names = {f.name for f in dataclasses.fields(schema)}
    plugin = "part_options" in names and values.get("parts")  # a plug-in part's options: checked by its part
    for key in list(values):
        if key not in names and plugin:
            values["part_options"] = {**(values.get("part_options") or {}), key: values.pop(key)}
        elif key not in names:
            raise SldartsError(f"config: unknown key {key!r}{_suggest(key, names)}")
    if "method" in values:
        values = expand_method({**defaults, **values}, explicit)
    return schema(**values)


RECIPES: dict[str, dict[str, Any]] = {
    # DARTS's CIFAR evaluation (Liu et al.): 600 epochs, cutout, drop path, auxiliary head.
    "darts-cifar": dict(dataset="cifar10", epochs=600, batch_size=96, lr=0.025, lr_schedule="cosine",
                        momentum=0.9, nesterov=False, weight_decay=3e-4, cutout=16, drop_path=0.2,
                        auxiliary_weight=0.4, grad_clip=5.0, label_smoothing=0.0, channels=36, cells=20),
    # P-DARTS's ImageNet evaluation, as the paper follows it (Sec. 4.2.2).
    "pdarts-imagenet": dict(dataset="imagenet", epochs=250, batch_size=768, lr=0.375, lr_schedule="linear",
                            warmup_epochs=5, momentum=0.9, nesterov=False, weight_decay=3e-5, label_smoothing=0.1,
                            auxiliary_weight=0.4, drop_path=0.0, cutout=0, grad_clip=5.0, color_jitter=0.4,
                            channels=48, cells=14),
    # NAS-Bench-201's training of every cell.
    "nb201": dict(dataset="cifar10", epochs=200, batch_size=256, lr=0.1, lr_schedule="cosine", momentum=0.9,
                  nesterov=True, weight_decay=5e-4, cutout=0, drop_path=0.0, auxiliary_weight=0.0,
                  grad_clip=0.0, label_smoothing=0.0, channels=16, cells=5),
    # A user model (space=pkg.mod:build): plain SGD with cosine decay and crop + flip, nothing else.
    "plain": dict(epochs=50, batch_size=64, lr=0.025, lr_schedule="cosine", momentum=0.9, nesterov=False,
                  weight_decay=3e-4, cutout=0, drop_path=0.0, auxiliary_weight=0.0, grad_clip=5.0,
                  label_smoothing=0.0),
}


@dataclass
class RetrainConfig(RunOptions):
    """Retraining a derived cell from scratch; ``recipe`` sets the defaults, every key overridable."""

    recipe: str = field(default="darts-cifar", metadata={**_choice(*RECIPES),
        "help": "darts-cifar, pdarts-imagenet, nb201 or plain: the defaults of every key below"})
    source_run: str = field(default="", metadata={
        "help": "a search run directory whose derived architecture is retrained"})
    genotype: str = field(default="", metadata={
        "help": "a built-in DARTS cell name (e.g. DARTS_V2) or a genotype JSON file"})
    arch: str = field(default="", metadata={"help": "an architecture string of the space (NB201: |op~0|+|...|)"})
    dataset: str = field(default="cifar10", metadata={"check": _check_dataset,
        "help": "cifar10, cifar100, imagenet16-120, imagefolder, imagenet, digits or pkg.mod:build"})
    data_root: str = field(default="data", metadata={"help": "the folder that holds the data set's files"})
    epochs: int = field(default=600, metadata={**_range(1), "help": "training epochs"})
    batch_size: int = field(default=96, metadata={**_range(1),
        "help": "images per step (the global batch, split over torchrun ranks)"})
    lr: float = field(default=0.025, metadata={**_range(0, lo_open=True), "help": "initial learning rate of SGD"})
    lr_schedule: str = field(default="cosine", metadata={**_choice("cosine", "linear"),
        "help": "cosine or linear decay of the learning rate to 0"})
    warmup_epochs: int = field(default=0, metadata={**_range(0),
        "help": "epochs of linear learning-rate warm-up before the schedule"})
    momentum: float = field(default=0.9, metadata={**_range(0, 1), "help": "SGD momentum"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum"})
    weight_decay: float = field(default=3e-4, metadata={**_range(0), "help": "SGD weight decay"})
    label_smoothing: float = field(default=0.0, metadata={**_range(0, 1),
        "help": "label smoothing of the cross-entropy"})
    auxiliary_weight: float = field(default=0.4, metadata={**_range(0),
        "help": "weight of the auxiliary head's loss (0: no head)"})
    drop_path: float = field(default=0.2, metadata={**_range(0, 1),
        "help": "drop-path probability, ramped linearly from 0 over the epochs"})
    cutout: int = field(default=16, metadata={**_range(0), "help": "cutout square side in pixels (0: none)"})
    color_jitter: float = field(default=0.0, metadata={**_range(0, 1),
        "help": "colour jitter strength of ImageNet training crops"})
    image_size: int = field(default=0, metadata={**_range(0),
        "help": "training crop side (0: 224 for ImageNet; image folders: the searched or first image's side)"})
    valid_split: float | None = field(default=None, metadata={**_range(0, 0.9), "help": (
        "share of the training images held out for valid_acc, as in the search (retrain RUN takes the run's); "
        "empty: 0.1, or 0 for the built-in sets (the DARTS protocol: all training images, test_acc each epoch)")})
    grad_clip: float = field(default=5.0, metadata={**_range(0),
        "help": "clip the gradient norm to this (0: no clipping)"})
    channels: int = field(default=36, metadata={**_range(1), "help": "initial channels C of the evaluation network"})
    cells: int = field(default=20, metadata={**_range(1),
        "help": "cells of the evaluation network (DARTS: layers; NB201: per stage)"})
    train_samples: int = field(default=0, metadata={**_range(0),
        "help": "cap the training images (0: all); for smoke runs"})
    eval_samples: int = field(default=0, metadata={**_range(0),
        "help": "cap the evaluation images (0: all); for smoke runs"})

    def __post_init__(self) -> None:
        self.validate()
        if sum(bool(v) for v in (self.source_run, self.genotype, self.arch)) != 1:
            raise SldartsError("retrain needs exactly one of a run directory, --genotype NAME_OR_FILE "
                               "or --arch STRING")


def _default_recipe(values: dict[str, Any]) -> str:
    """The recipe of the retrained architecture's space (an NB201 arch string: the benchmark's own)."""
    from sldarts.cells import resolve_cell

    try:
        space, _ = resolve_cell(values.get("source_run") or None, values.get("genotype") or None,
                                values.get("arch") or None)
    except SldartsError:
        return "darts-cifar"  # the config check that follows names the problem
    return space.default_recipe


def load_retrain_config(path: str | Path | None, overrides: dict[str, Any]) -> RetrainConfig:
    """Defaults < recipe < YAML file < overrides; the recipe may be named in the file or the overrides."""
    file_values = read_yaml(path) if path is not None else {}
    merged = {**file_values, **overrides}
    recipe = merged.get("recipe") or _default_recipe(merged)
    if recipe not in RECIPES:
        raise SldartsError(f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)}"
                           + _suggest(str(recipe), RECIPES))
    base = dict(RECIPES[recipe], recipe=recipe)
    base.update(searched_data(merged.get("source_run")))  # retrain what was searched: the run's data and split
    base.update(file_values)
    return load_config(None, overrides, base=base, schema=RetrainConfig)


SEARCHED_DATA = ("dataset", "data_root", "image_size", "valid_split")


def searched_data(run_dir: str | None) -> dict[str, Any]:
    """The data keys of a search run (its data set, folder, split and image side as it resolved it): what
    ``sldarts retrain RUN`` trains on unless a key is given again."""
    import json

    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if saved is None or not saved.exists():
        return {}
    old = yaml.safe_load(saved.read_text()) or {}
    if str(old.get("dataset", "")).startswith("<"):  # a Python object: the retrain needs it named
        return {}
    out = {k: old[k] for k in SEARCHED_DATA if k in old}
    result = Path(run_dir) / "result.json"
    if result.exists() and out.get("dataset") not in ("cifar10", "cifar100", "imagenet16-120", "digits"):
        size = (json.loads(result.read_text()).get("input") or {}).get("size")
        if size:
            out["image_size"] = size
    return out
