"""Data for a search: read the set, split it the way the optimisation strategy needs, build loaders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sldarts.config import SearchConfig
from sldarts.data.loader import Cycle, StreamLoader, TensorLoader
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

Loader = TensorLoader | StreamLoader

__all__ = ["SearchData", "build_search_data", "load_arrays", "Cycle", "TensorLoader", "StreamLoader"]

TRAIN, ARCH, EVAL = 1, 2, 3  # random streams


@dataclass
class SearchData:
    info: DatasetInfo
    train: Loader  # batches that update w (and α, in single-level)
    arch: Loader | None  # batches that update α in bi-level
    eval: Loader  # supernet validation accuracy


def load_arrays(name: str, root: str | Path) -> tuple[ArrayData, ArrayData, DatasetInfo]:
    """Read an in-memory data set: (train, test, info)."""
    root = Path(root)
    if name == "digits":
        tr, te = read_digits()
        return tr, te, DatasetInfo("digits", 10, 1, (0.305,), (0.38,), pad=1, flip=False)
    if name == "cifar10":
        tr, te = read_cifar10(root)
        return tr, te, DatasetInfo(name, 10, 3, CIFAR_MEAN, CIFAR_STD, pad=4, flip=True)
    if name == "cifar100":
        tr, te = read_cifar100(root)
        return tr, te, DatasetInfo(name, 100, 3, C100_MEAN, C100_STD, pad=4, flip=True)
    if name == "imagenet16-120":
        tr, te = read_imagenet16(root, 120)
        return tr, te, DatasetInfo(name, 120, 3, IN16_MEAN, IN16_STD, pad=2, flip=True)
    if name == "imagefolder":
        tr, te, classes = read_image_folder(root)
        pad = max(tr.x.shape[-1] // 8, 1)
        return tr, te, DatasetInfo(name, len(classes), 3, IN_MEAN, IN_STD, pad=pad, flip=True)
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
    info = DatasetInfo("imagenet", len(classes), 3, IN_MEAN, IN_STD, pad=0, flip=True)
    return files, labels, [vfiles[i] for i in keep], [vlabels[i] for i in keep], info


def split_indices(n: int, cfg: SearchConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the w-batches and α-batches (None: α uses the w data, in its own order)."""
    order = _fixed_order(n)
    if cfg.train_samples:
        order = order[:cfg.train_samples]
    if cfg.optim == "bilevel" and cfg.arch_data == "valid":
        cut = int(round(len(order) * cfg.train_portion))
        if cut < 2 or len(order) - cut < 2:
            raise SldartsError(f"train_portion={cfg.train_portion} leaves an empty split of {len(order)} images")
        return order[:cut], order[cut:]
    keep = max(int(round(len(order) * cfg.data_fraction)), 2)
    return order[:keep], None


def build_search_data(cfg: SearchConfig, device: torch.device, rank: int = 0, world: int = 1) -> SearchData:
    bs, common = _per_rank(cfg, device, rank, world)
    if cfg.dataset == "imagenet":
        return _imagenet(cfg, bs, common)
    train, test, info = load_arrays(cfg.dataset, cfg.data_root)
    w_idx, a_idx = split_indices(len(train.y), cfg)
    w_set = _subset(train, w_idx)
    a_set = _subset(train, a_idx) if a_idx is not None else w_set
    if cfg.eval_samples:
        test = _subset(test, _fixed_order(len(test.y))[:cfg.eval_samples])
    mk = lambda d, aug, shuf, stream: TensorLoader(d, info, bs, augment=aug, shuffle=shuf, stream=stream, **common)  # noqa: E731
    arch = mk(a_set, cfg.augment, True, ARCH) if cfg.optim == "bilevel" else None
    return SearchData(info, mk(w_set, cfg.augment, True, TRAIN), arch, mk(test, False, False, EVAL))


def _imagenet(cfg: SearchConfig, bs: int, common: dict) -> SearchData:
    files, labels, vfiles, vlabels, info = _imagenet_folders(cfg)
    w_idx, a_idx = split_indices(len(files), cfg)
    pick = lambda idx: ([files[i] for i in idx], [labels[i] for i in idx])  # noqa: E731
    mk = lambda fl, train, stream: StreamLoader(*fl, info, bs, train=train, stream=stream,  # noqa: E731
                                                workers=cfg.workers, **common)
    arch = None
    if cfg.optim == "bilevel":
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
    tr, te, info = load_arrays(cfg.dataset, cfg.data_root)
    if cfg.train_samples:
        tr = _subset(tr, _fixed_order(len(tr.y))[:cfg.train_samples])
    if cfg.eval_samples:
        te = _subset(te, _fixed_order(len(te.y))[:cfg.eval_samples])
    train = TensorLoader(tr, info, bs, augment=True, shuffle=True, stream=TRAIN, cutout=cfg.cutout, **common)
    return SearchData(info, train, None, TensorLoader(te, info, bs, augment=False, shuffle=False, stream=EVAL,
                                                      **common))
