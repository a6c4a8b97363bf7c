"""Data for a search: read the set, split it the way the optimisation strategy needs, build loaders.

:data:`DATASETS` is the one catalogue of built-in data sets; ``dataset=pkg.mod:build`` (or ``file.py:build``)
names a function returning ``(train, test)`` map-style datasets, and the Python API takes datasets directly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sldarts.data.loader import Cycle, DatasetLoader, StreamLoader, TensorLoader, check_dataset, dataset_info
from sldarts.data.readers import (
    C100_MEAN,
    C100_STD,
    CIFAR_MEAN,
    CIFAR_STD,
    IN16_MEAN,
    IN16_STD,
    IN_MEAN,
    IN_STD,
    ArrayData,
    DatasetInfo,
    decode_files,
    folder_splits,
    holdout,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_image_folder,
    read_imagenet16,
    short_side,
)
from sldarts.errors import SldartsError
from sldarts.registry import is_import_path, load_object

if TYPE_CHECKING:
    from sldarts.config import SearchConfig

Loader = TensorLoader | StreamLoader | DatasetLoader

__all__ = ["DATASETS", "SearchData", "build_search_data", "load_arrays", "Cycle", "TensorLoader", "StreamLoader",
           "DatasetLoader"]

TRAIN, ARCH, EVAL = 1, 2, 3  # random streams
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class DataSpec:
    """A built-in data set's shape: classes (None: read from the folders), channels, standard input side."""

    num_classes: int | None
    in_channels: int
    side: int


DATASETS: dict[str, DataSpec] = {
    "digits": DataSpec(10, 1, 8),
    "cifar10": DataSpec(10, 3, 32),
    "cifar100": DataSpec(100, 3, 32),
    "imagenet16-120": DataSpec(120, 3, 16),
    "imagefolder": DataSpec(None, 3, 32),
    "imagenet": DataSpec(1000, 3, 224),
}


@dataclass
class SearchData:
    info: DatasetInfo
    train: Loader  # batches that update w (and α, in single-level)
    arch: Loader | None  # batches that update α in bi-level
    eval: Loader  # supernet validation accuracy (selection numbers: never the test split)
    note: str = ""  # said once at the start: which split is which
    test: Loader | None = None  # measured once, at the end (test_acc)
    preprocess: dict = field(default_factory=dict)  # size, crop, interpolation (image data)
    split: dict = field(default_factory=dict)  # where each split comes from; held-out validation files
    eval_is_test: bool = False  # a retrain on a built-in set without valid_split: `eval` is the test split

    @cached_property
    def sample_shape(self) -> tuple[int, ...]:
        """One input's shape (C, H, W), batch excluded (one batch read, once)."""
        x, _ = next(iter(self.eval.epoch(0)))
        return tuple(x.shape[1:])

    def input_spec(self) -> dict:
        """What a trained network expects, for ``sldarts.load``/``predict``: the input shape, the
        normalisation of pixels scaled to [0, 1] (none for user data sets, which bring their own) and the
        class names where the data set has them."""
        info = self.info
        return {"shape": list(self.sample_shape), "num_classes": info.num_classes,
                "mean": list(info.mean[:info.in_channels]), "std": list(info.std[:info.in_channels]),
                "classes": list(info.classes), **self.preprocess}


def load_arrays(name: str, root: str | Path, size: int = 0) -> tuple[ArrayData, ArrayData, DatasetInfo]:
    """Read an in-memory data set: (train, test, info)."""
    root = Path(root)
    if name == "digits":
        tr, te = read_digits()
        return tr, te, DatasetInfo("digits", 10, 1, (0.305,), (0.38,), pad=1, flip=False,
                                   classes=tuple(str(i) for i in range(10)))
    if name == "cifar10":
        tr, te = read_cifar10(root)
        return tr, te, DatasetInfo(name, 10, 3, CIFAR_MEAN, CIFAR_STD, pad=4, flip=True, classes=CIFAR10_CLASSES)
    if name == "cifar100":
        tr, te = read_cifar100(root)
        return tr, te, DatasetInfo(name, 100, 3, C100_MEAN, C100_STD, pad=4, flip=True)
    if name == "imagenet16-120":
        tr, te = read_imagenet16(root, 120)
        return tr, te, DatasetInfo(name, 120, 3, IN16_MEAN, IN16_STD, pad=2, flip=True)
    if name == "imagefolder":
        tr, te, classes = read_image_folder(root, size)
        pad = max(tr.x.shape[-1] // 8, 1)
        return tr, te, DatasetInfo(name, len(classes), 3, IN_MEAN, IN_STD, pad=pad, flip=True,
                                   classes=tuple(classes))
    raise SldartsError(f"dataset {name!r} is not an in-memory data set")


def _fixed_order(n: int) -> np.ndarray:
    """One permutation for every seed, so splits and subsets are the same data across seeds."""
    return np.random.RandomState(0).permutation(n)


def _subset(data: ArrayData, idx: np.ndarray) -> ArrayData:
    return ArrayData(data.x[idx], data.y[idx])


def _per_rank(cfg, device: torch.device, rank: int, world: int) -> tuple[int, dict]:
    """This rank's share of the global batch, and the loader arguments every loader takes."""
    bs = cfg.batch_size // world if world > 1 else cfg.batch_size
    if bs < 1:
        raise SldartsError(f"batch_size={cfg.batch_size} is smaller than the {world} processes; raise it")
    return bs, dict(device=device, seed=cfg.seed, rank=rank, world=world, channels_last=cfg.channels_last)


def _arch_batches(cfg: SearchConfig) -> bool:
    """Whether the search's strategy steps α on batches of its own (bi-level): an α split is then held out."""
    from sldarts.strategies import strategy_class

    return strategy_class(cfg.optim, cfg.order).needs_arch_batch


def split_indices(n: int, cfg: SearchConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the w-batches and α-batches (None: α uses the w data, in its own order)."""
    order = _fixed_order(n)
    if cfg.train_samples:
        order = order[:cfg.train_samples]
    if _arch_batches(cfg) and cfg.arch_data == "valid":
        cut = int(round(len(order) * cfg.train_portion))
        if cut < 2 or len(order) - cut < 2:
            raise SldartsError(f"train_portion={cfg.train_portion} leaves an empty split of {len(order)} images")
        return order[:cut], order[cut:]
    keep = max(int(round(len(order) * cfg.data_fraction)), 2)
    return order[:keep], None


def _valid_split(cfg, default: float) -> float:
    """``valid_split``, or (unset) ``default``: 0.1 for a search of any data set without a validation split
    of its own (the built-in benchmark sets included: valid_acc never reads their test split)."""
    v = getattr(cfg, "valid_split", None)
    return default if v is None else float(v)


def user_datasets(spec: str, data_root: str) -> tuple[Any, Any, Any]:
    """``dataset=pkg.mod:build``: call ``build(data_root)`` (or ``build()``) for ``(train, test)`` or
    ``(train, valid, test)`` datasets; returned as (train, valid or None, test or None)."""
    build = load_object(spec, "dataset")
    if not callable(build):
        raise SldartsError(f"dataset {spec!r} is a {type(build).__name__}, not a function returning (train, test)")
    try:
        takes_root = len(inspect.signature(build).parameters) > 0
    except (TypeError, ValueError):
        takes_root = False
    out = build(data_root) if takes_root else build()
    if not (isinstance(out, (tuple, list)) and len(out) in (2, 3)):
        raise SldartsError(f"dataset {spec!r} returned a {type(out).__name__}; it must return (train, test) "
                           "or (train, valid, test) datasets")
    return (out[0], None, out[1]) if len(out) == 2 else (out[0], out[1], out[2])


def _labels_of(ds) -> np.ndarray:
    """Every label of a dataset (its ``targets`` where it has them), for a stratified hold-out."""
    base = getattr(ds, "dataset", None)
    targets = getattr(ds, "targets", None)
    if targets is not None and base is None:
        return np.asarray(targets)
    from sldarts.data.loader import _as_pair

    ys = [_as_pair(ds[i], i)[1] for i in range(len(ds))]
    return np.stack([y.numpy() for y in ys]) if ys and ys[0].dim() else np.asarray([y.item() for y in ys])


def _recorded_holdout(names: list[str], recorded: dict | None, labels, frac: float):
    """(kept, held-out) indices: the run's recorded validation files when it has them (resume, retrain),
    else a fresh stratified hold-out."""
    if recorded and recorded.get("valid_held_out") is not None:
        held_names = set(recorded["valid_held_out"])
        held = np.asarray([i for i, n in enumerate(names) if n in held_names], dtype=np.int64)
        keep = np.asarray([i for i, n in enumerate(names) if n not in held_names], dtype=np.int64)
        return keep, held
    return holdout(labels, frac)


def _dataset_search_data(cfg: SearchConfig, train: Any, valid: Any | None, bs: int, common: dict,
                         test: Any = None, recorded: dict | None = None) -> SearchData:
    """Search data from map-style datasets: ``valid`` (else ``valid_split`` of ``train``, held out) gives the
    validation accuracy and, in bi-level search, the α batches; ``test`` is measured once at the end."""
    classes = not getattr(cfg, "loss", "")  # the default loss (cross-entropy) needs class indices
    check_dataset(train, "train_data", classes)
    if valid is not None:
        check_dataset(valid, "valid_data", classes)
    if test is not None:
        check_dataset(test, "test_data", classes)
    info = dataset_info(train, cfg.dataset)
    mk = lambda ds, idx, shuf, stream: DatasetLoader(ds, idx, bs, shuffle=shuf, stream=stream,  # noqa: E731
                                                     workers=cfg.workers, **common)
    kept, held = np.arange(len(train)), np.zeros(0, np.int64)
    frac = _valid_split(cfg, 0.1)
    split = {"train": "train_data", "test": "test_data" if test is not None else None}
    if valid is None and frac > 0:
        kept, held = _recorded_holdout([str(i) for i in range(len(train))], recorded, _labels_of(train), frac)
        split.update(valid=f"{frac:g} of train_data held out", valid_held_out=[str(i) for i in held])
    elif valid is not None:
        split["valid"] = "valid_data"
    if valid is not None and _arch_batches(cfg) and cfg.arch_data == "valid":
        w_idx = kept[_fixed_order(len(kept))[:cfg.train_samples or None]]
        a_idx: np.ndarray | None = np.arange(len(valid))
        arch_set = valid
    else:
        w_pos, a_pos = split_indices(len(kept), cfg)
        w_idx, a_idx = kept[w_pos], (kept[a_pos] if a_pos is not None else None)
        arch_set = train
    note = ""
    if valid is not None:
        eval_set, e_idx = valid, _fixed_order(len(valid))
    elif len(held):
        eval_set, e_idx = train, held[_fixed_order(len(held))]
    else:
        eval_set, e_idx = train, w_idx
        note = "valid_split=0 and no valid_data: valid_acc is measured on the training data"
    e_idx = np.sort(e_idx[:cfg.eval_samples or None])
    arch = None
    if _arch_batches(cfg):
        arch = mk(arch_set, a_idx if a_idx is not None else w_idx, True, ARCH)
    tl = mk(test, np.arange(len(test)), False, EVAL) if test is not None else None
    return _checked(SearchData(info, mk(train, w_idx, True, TRAIN), arch, mk(eval_set, e_idx, False, EVAL),
                      note or _split_note(split, len(w_idx), len(e_idx), tl), tl, {}, split))


def _split_note(split: dict, n_train: int, n_valid: int, test: Loader | None) -> str:
    """The run's first line says which split is which."""
    test_part = (f"test {test.num_samples} from {split['test']} (test_acc, measured once at the end)"
                 if test is not None else "no test split")
    return (f"splits: train {n_train} from {split['train']}, valid {n_valid} from {split.get('valid')} "
            f"(valid_acc), {test_part}")


def _checked(data: SearchData) -> SearchData:
    """A user data set's labels are checked against its classes in every batch of every split."""
    for loader in (data.train, data.arch, data.eval, data.test):
        if isinstance(loader, DatasetLoader):
            loader.num_classes = data.info.num_classes
    return data


def build_search_data(cfg: SearchConfig, device: torch.device, rank: int = 0, world: int = 1,
                      train_data: Any = None, valid_data: Any = None, test_data: Any = None,
                      recorded: dict | None = None) -> SearchData:
    """``recorded``: the run's split.json (resume), so a resumed run validates on the very same images."""
    bs, common = _per_rank(cfg, device, rank, world)
    if train_data is None and is_import_path(cfg.dataset) and cfg.dataset not in DATASETS:
        train_data, valid_data, test_data = user_datasets(cfg.dataset, cfg.data_root)
    if train_data is not None:
        return _dataset_search_data(cfg, train_data, valid_data, bs, common, test_data, recorded)
    if cfg.dataset.startswith("<"):
        raise SldartsError(f"dataset {cfg.dataset} was a Python object passed to sldarts.search(train_data=...); "
                           "pass the same data set again to continue this run")
    if cfg.dataset in FOLDERS:
        return _folder_data(cfg, bs, common, recorded, search=True)
    train, test, info = load_arrays(cfg.dataset, cfg.data_root, cfg.image_size)
    frac = _valid_split(cfg, 0.1)
    split: dict[str, Any] = {"train": f"{cfg.dataset} train", "test": f"{cfg.dataset} test"}
    if frac > 0:
        kept, held = _recorded_holdout([str(i) for i in range(len(train.y))], recorded, train.y, frac)
        evalset, train = _subset(train, held), _subset(train, kept)
        split.update(valid=f"{frac:g} of {cfg.dataset} train held out (stratified)",
                     valid_held_out=[str(i) for i in held])
    w_idx, a_idx = split_indices(len(train.y), cfg)
    w_set = _subset(train, w_idx)
    a_set = _subset(train, a_idx) if a_idx is not None else w_set
    if frac == 0:  # no held-out split: valid_acc is training accuracy, never the test split's
        evalset = w_set
        split["valid"] = f"{cfg.dataset} train (valid_split=0: the training images themselves)"
    if cfg.eval_samples:  # a smoke run caps the test split too
        evalset = _subset(evalset, _fixed_order(len(evalset.y))[:cfg.eval_samples])
        test = _subset(test, _fixed_order(len(test.y))[:cfg.eval_samples])
    mk = lambda d, aug, shuf, stream: TensorLoader(d, info, bs, augment=aug, shuffle=shuf, stream=stream, **common)  # noqa: E731
    arch = mk(a_set, cfg.augment, True, ARCH) if _arch_batches(cfg) else None
    tl = mk(test, False, False, EVAL)
    ev = mk(evalset, False, False, EVAL)
    return SearchData(info, mk(w_set, cfg.augment, True, TRAIN), arch, ev,
                      _split_note(split, w_set.x.shape[0], ev.num_samples, tl), tl,
                      _image_preprocess(int(train.x.shape[-1]), 1.0), split)


FOLDERS = ("imagefolder", "imagenet")


def _image_preprocess(side: int, crop_pct: float) -> dict:
    """The one image rule, recorded with the run (timm's pretrained_cfg fields): resize the shorter side to
    ``side / crop_pct`` (bilinear), centre crop ``side`` x ``side``; then (x/255 - mean) / std."""
    return {"size": side, "resize": "shorter side", "crop": "center", "crop_pct": crop_pct,
            "interpolation": "bilinear"}


@dataclass
class _Parts:
    info: DatasetInfo
    side: int
    crop_pct: float
    train: tuple[list, list]
    valid: tuple[list, list] | None
    test: tuple[list, list] | None
    split: dict


def folder_parts(cfg, recorded: dict | None = None) -> _Parts:
    """An image folder's train / valid / test files: ``val/`` is the validation split when there is one, else
    ``valid_split`` of ``train/`` (or of the one folder) is held out, stratified; ``test/`` is the test split."""
    root = Path(cfg.data_root)
    sp = folder_splits(root)
    files, labels = sp.train
    split: dict[str, Any] = {"train": sp.where["train"], "valid": sp.where.get("valid"),
                             "test": sp.where.get("test")}
    valid = sp.valid
    frac = _valid_split(cfg, 0.1)
    if valid is None and frac > 0:
        names = [str(f.relative_to(root)) for f in files]
        kept, held = _recorded_holdout(names, recorded, labels, frac)
        pick = lambda idx: ([files[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
        valid, (files, labels) = pick(held), pick(kept)
        split.update(valid=f"{frac:g} of {split['train']} held out (stratified)",
                     valid_held_out=[names[i] for i in held])
    imagenet = cfg.dataset == "imagenet"
    side = cfg.image_size or (224 if imagenet else short_side(files[0]))
    crop_pct = 0.875 if imagenet else 1.0
    info = DatasetInfo(cfg.dataset, len(sp.classes), 3, IN_MEAN, IN_STD, pad=0, flip=True,
                       classes=tuple(sp.classes), resized_crop=True)
    return _Parts(info, side, crop_pct, (files, labels), valid, sp.test, split)


def _folder_data(cfg, bs: int, common: dict, recorded: dict | None, search: bool) -> SearchData:
    """Image folders: held in memory (decoded once, cached) or, beyond ``cache_limit_mb`` (and always for
    ImageNet), decoded by worker processes; both apply the same resize + centre crop."""
    p = folder_parts(cfg, recorded)
    files, labels = p.train
    n_all = len(files) + sum(len(s[0]) for s in (p.valid, p.test) if s is not None)
    streamed = cfg.dataset == "imagenet" or n_all * 3 * p.side * p.side > getattr(cfg, "cache_limit_mb", 2048) * 2**20
    if search:
        w_pos, a_pos = split_indices(len(files), cfg)
    else:
        w_pos, a_pos = _fixed_order(len(files))[:cfg.train_samples or None], None
    pick = lambda idx: ([files[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    eval_part, note = p.valid, ""
    if eval_part is None:
        eval_part, note = pick(w_pos), "valid_split=0 and no val/ folder: valid_acc is measured on the training data"
    if cfg.eval_samples:
        keep = _fixed_order(len(eval_part[0]))[:cfg.eval_samples]
        eval_part = ([eval_part[0][i] for i in keep], [eval_part[1][i] for i in keep])
    jitter = getattr(cfg, "color_jitter", 0.0)
    augment = getattr(cfg, "augment", True)
    if streamed:
        mk = lambda fl, train, stream: StreamLoader(*fl, p.info, bs, train=train, stream=stream,  # noqa: E731
                                                    workers=cfg.workers, size=p.side, crop_pct=p.crop_pct,
                                                    jitter=jitter if train else 0.0, **common)
    else:
        def mk(fl, train, stream):
            data = ArrayData(decode_files(fl[0], p.side, p.crop_pct), np.asarray(fl[1], dtype=np.int64))
            return TensorLoader(data, p.info, bs, augment=train and augment, shuffle=train, stream=stream,
                                cutout=getattr(cfg, "cutout", 0) if train and not search else 0, **common)
    arch = None
    if search and _arch_batches(cfg):
        arch = mk(pick(a_pos if a_pos is not None else w_pos), True, ARCH)
    train = mk(pick(w_pos), True, TRAIN)
    ev = mk(eval_part, False, EVAL)
    tl = mk(p.test, False, EVAL) if p.test is not None else None
    size = (f"images: shorter side resized to {round(p.side / p.crop_pct)}, centre crop {p.side}x{p.side}"
            + ("" if cfg.image_size else " (image_size=0: the first image's shorter side)")
            + (", streamed from disk" if streamed else ", held in memory"))
    return SearchData(p.info, train, arch, ev,
                      (note or _split_note(p.split, train.num_samples, ev.num_samples, tl)) + "; " + size,
                      tl, _image_preprocess(p.side, p.crop_pct), p.split)


def build_train_data(cfg, device: torch.device, rank: int = 0, world: int = 1,
                     recorded: dict | None = None) -> SearchData:
    """Retraining data: the whole training split (``train_samples`` caps it), the validation split and the
    test split, as the search of ``recorded`` (its split.json) had them. Returned without α batches."""
    bs, common = _per_rank(cfg, device, rank, world)
    if cfg.dataset in FOLDERS:
        return _folder_data(cfg, bs, common, recorded, search=False)
    if is_import_path(cfg.dataset) and cfg.dataset not in DATASETS:
        tr_set, va_set, te_set = user_datasets(cfg.dataset, cfg.data_root)
        check_dataset(tr_set, "train data")
        info = dataset_info(tr_set, cfg.dataset)
        mk = lambda ds, idx, shuf, stream: DatasetLoader(  # noqa: E731
            ds, idx, bs, shuffle=shuf, stream=stream, workers=cfg.workers, **common)
        kept, held = np.arange(len(tr_set)), np.zeros(0, np.int64)
        frac = _valid_split(cfg, 0.1)
        if va_set is None and frac > 0:
            kept, held = _recorded_holdout([str(i) for i in range(len(tr_set))], recorded, _labels_of(tr_set), frac)
        w_idx = kept[_fixed_order(len(kept))[:cfg.train_samples or None]]
        if va_set is not None:
            ev = mk(va_set, _fixed_order(len(va_set))[:cfg.eval_samples or None], False, EVAL)
        else:
            ev = mk(tr_set, held[:cfg.eval_samples or None] if len(held) else w_idx, False, EVAL)
        tl = mk(te_set, np.arange(len(te_set)), False, EVAL) if te_set is not None else None
        return _checked(SearchData(info, mk(tr_set, w_idx, True, TRAIN), None, ev, "", tl))
    tr, te, info = load_arrays(cfg.dataset, cfg.data_root)
    frac = _valid_split(cfg, 0.0)
    ev_arr, test = te, None
    if frac > 0:
        kept, held = _recorded_holdout([str(i) for i in range(len(tr.y))], recorded, tr.y, frac)
        ev_arr, test, tr = _subset(tr, held), te, _subset(tr, kept)
    if cfg.train_samples:
        tr = _subset(tr, _fixed_order(len(tr.y))[:cfg.train_samples])
    if cfg.eval_samples:
        ev_arr = _subset(ev_arr, _fixed_order(len(ev_arr.y))[:cfg.eval_samples])
    train = TensorLoader(tr, info, bs, augment=True, shuffle=True, stream=TRAIN, cutout=cfg.cutout, **common)
    mk = lambda d: TensorLoader(d, info, bs, augment=False, shuffle=False, stream=EVAL, **common)  # noqa: E731
    return SearchData(info, train, None, mk(ev_arr), "", mk(test) if test is not None else None,
                      _image_preprocess(int(tr.x.shape[-1]), 1.0), eval_is_test=frac == 0)
