"""Data for a search: read the set, split it the way the optimisation strategy needs, build loaders.

:data:`DATASETS` is the one catalogue of built-in data sets; ``dataset=pkg.mod:build`` (or ``file.py:build``)
names a function returning ``(train, test)`` map-style datasets, and the Python API takes datasets directly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
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
    list_image_folder,
    read_cifar10,
    read_cifar100,
    read_digits,
    read_image_folder,
    read_imagenet16,
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
    eval: Loader  # supernet validation accuracy
    note: str = ""  # said once at the start (e.g. what valid_acc is measured on)

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
                "classes": list(info.classes)}


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


def _imagenet_folders(cfg) -> tuple[list, list, list, list, DatasetInfo]:
    """ImageNet-style tree: (train files, labels, val files capped by eval_samples, labels, info)."""
    root = Path(cfg.data_root)
    files, labels, classes = list_image_folder(root / "train")
    vfiles, vlabels, _ = list_image_folder(root / "val" if (root / "val").is_dir() else root / "test")
    keep = _fixed_order(len(vfiles))[:cfg.eval_samples or None]
    info = DatasetInfo(cfg.dataset, len(classes), 3, IN_MEAN, IN_STD, pad=0, flip=True, classes=tuple(classes))
    return files, labels, [vfiles[i] for i in keep], [vlabels[i] for i in keep], info


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


def user_datasets(spec: str, data_root: str) -> tuple[Any, Any]:
    """``dataset=pkg.mod:build``: call ``build(data_root)`` (or ``build()``) for ``(train, test)`` datasets."""
    build = load_object(spec, "dataset")
    if not callable(build):
        raise SldartsError(f"dataset {spec!r} is a {type(build).__name__}, not a function returning (train, test)")
    try:
        takes_root = len(inspect.signature(build).parameters) > 0
    except (TypeError, ValueError):
        takes_root = False
    out = build(data_root) if takes_root else build()
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise SldartsError(f"dataset {spec!r} returned a {type(out).__name__}; it must return (train, test) datasets")
    return out[0], out[1]


def _dataset_search_data(cfg: SearchConfig, train: Any, valid: Any | None, bs: int, common: dict) -> SearchData:
    """Search data from map-style datasets: ``valid`` (if any) gives the α batches of bi-level search and
    the validation accuracy; without it bi-level splits ``train`` by ``train_portion``."""
    check_dataset(train, "train_data")
    if valid is not None:
        check_dataset(valid, "valid_data")
    info = dataset_info(train, cfg.dataset)
    mk = lambda ds, idx, shuf, stream: DatasetLoader(ds, idx, bs, shuffle=shuf, stream=stream,  # noqa: E731
                                                     workers=cfg.workers, **common)
    note = ""
    if valid is not None and _arch_batches(cfg) and cfg.arch_data == "valid":
        w_idx = _fixed_order(len(train))[:cfg.train_samples or None]
        a_idx: np.ndarray | None = np.arange(len(valid))
        arch_set = valid
    else:
        w_idx, a_idx = split_indices(len(train), cfg)
        arch_set = train
    if valid is not None:
        eval_set, e_idx = valid, _fixed_order(len(valid))
    elif a_idx is not None:
        eval_set, e_idx = train, a_idx
    else:
        eval_set, e_idx = train, w_idx
        note = "no valid_data: valid_acc is measured on the training data"
    e_idx = np.sort(e_idx[:cfg.eval_samples or None])
    arch = None
    if _arch_batches(cfg):
        arch = mk(arch_set, a_idx if a_idx is not None else w_idx, True, ARCH)
    return _checked(SearchData(info, mk(train, w_idx, True, TRAIN), arch, mk(eval_set, e_idx, False, EVAL), note))


def _checked(data: SearchData) -> SearchData:
    """A user data set's labels are checked against its classes in every batch of every split."""
    for loader in (data.train, data.arch, data.eval):
        if isinstance(loader, DatasetLoader):
            loader.num_classes = data.info.num_classes
    return data


def build_search_data(cfg: SearchConfig, device: torch.device, rank: int = 0, world: int = 1,
                      train_data: Any = None, valid_data: Any = None) -> SearchData:
    bs, common = _per_rank(cfg, device, rank, world)
    if train_data is None and is_import_path(cfg.dataset) and cfg.dataset not in DATASETS:
        train_data, valid_data = user_datasets(cfg.dataset, cfg.data_root)
    if train_data is not None:
        return _dataset_search_data(cfg, train_data, valid_data, bs, common)
    if cfg.dataset.startswith("<"):
        raise SldartsError(f"dataset {cfg.dataset} was a Python object passed to sldarts.search(train_data=...); "
                           "pass the same data set again to continue this run")
    if cfg.dataset == "imagenet" or (cfg.dataset == "imagefolder" and _too_big(cfg)):
        return _streamed(cfg, bs, common)
    train, test, info = load_arrays(cfg.dataset, cfg.data_root, cfg.image_size)
    w_idx, a_idx = split_indices(len(train.y), cfg)
    w_set = _subset(train, w_idx)
    a_set = _subset(train, a_idx) if a_idx is not None else w_set
    if cfg.eval_samples:
        test = _subset(test, _fixed_order(len(test.y))[:cfg.eval_samples])
    mk = lambda d, aug, shuf, stream: TensorLoader(d, info, bs, augment=aug, shuffle=shuf, stream=stream, **common)  # noqa: E731
    arch = mk(a_set, cfg.augment, True, ARCH) if _arch_batches(cfg) else None
    return SearchData(info, mk(w_set, cfg.augment, True, TRAIN), arch, mk(test, False, False, EVAL))


def _too_big(cfg: SearchConfig) -> bool:
    """Whether an image folder, decoded at ``image_size`` (or its first image's size), exceeds
    ``cache_limit_mb``: then it is streamed from disk by worker processes instead of held in memory."""
    root = Path(cfg.data_root)
    files, _, _ = list_image_folder(root / "train")
    side = cfg.image_size
    if not side:
        from sldarts.data.readers import _decode_pil

        w, h = _decode_pil(files[0]).size
        side = max(w, h)
    return len(files) * 3 * side * side > cfg.cache_limit_mb * 2**20


def _streamed(cfg: SearchConfig, bs: int, common: dict) -> SearchData:
    """ImageNet-style folders decoded by workers: random-resized crop + flip for training, centre crop."""
    files, labels, vfiles, vlabels, info = _imagenet_folders(cfg)
    w_idx, a_idx = split_indices(len(files), cfg)
    pick = lambda idx: ([files[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    size = cfg.image_size or (224 if cfg.dataset == "imagenet" else DATASETS["imagefolder"].side)
    mk = lambda fl, train, stream: StreamLoader(*fl, info, bs, train=train, stream=stream,  # noqa: E731
                                                workers=cfg.workers, size=size, **common)
    arch = None
    if _arch_batches(cfg):
        arch = mk(pick(a_idx if a_idx is not None else w_idx), True, ARCH)
    return SearchData(info, mk(pick(w_idx), True, TRAIN), arch, mk((vfiles, vlabels), False, EVAL))


def build_train_data(cfg, device: torch.device, rank: int = 0, world: int = 1) -> SearchData:
    """Retraining data: the whole training split (``train_samples`` caps it) and the test split.

    ``cfg`` needs dataset, data_root, batch_size, seed, train_samples, eval_samples, cutout, workers,
    color_jitter. Returned as a SearchData without α batches.
    """
    bs, common = _per_rank(cfg, device, rank, world)
    if cfg.dataset == "imagenet":
        files, labels, vfiles, vlabels, info = _imagenet_folders(cfg)
        order = _fixed_order(len(files))[:cfg.train_samples or None]
        train = StreamLoader([files[i] for i in order], [labels[i] for i in order], info, bs, train=True,
                             stream=TRAIN, workers=cfg.workers, jitter=cfg.color_jitter, size=cfg.image_size,
                             **common)
        ev = StreamLoader(vfiles, vlabels, info, bs, train=False, stream=EVAL, workers=cfg.workers,
                          size=cfg.image_size, **common)
        return SearchData(info, train, None, ev)
    if is_import_path(cfg.dataset) and cfg.dataset not in DATASETS:
        tr_set, te_set = user_datasets(cfg.dataset, cfg.data_root)
        check_dataset(tr_set, "train data")
        info = dataset_info(tr_set, cfg.dataset)
        mk = lambda ds, n, shuf, stream: DatasetLoader(  # noqa: E731
            ds, _fixed_order(len(ds))[:n or None], bs, shuffle=shuf, stream=stream, workers=cfg.workers, **common)
        return _checked(SearchData(info, mk(tr_set, cfg.train_samples, True, TRAIN), None,
                                   mk(te_set, cfg.eval_samples, False, EVAL)))
    tr, te, info = load_arrays(cfg.dataset, cfg.data_root)
    if cfg.train_samples:
        tr = _subset(tr, _fixed_order(len(tr.y))[:cfg.train_samples])
    if cfg.eval_samples:
        te = _subset(te, _fixed_order(len(te.y))[:cfg.eval_samples])
    train = TensorLoader(tr, info, bs, augment=True, shuffle=True, stream=TRAIN, cutout=cfg.cutout, **common)
    return SearchData(info, train, None, TensorLoader(te, info, bs, augment=False, shuffle=False, stream=EVAL,
                                                      **common))
