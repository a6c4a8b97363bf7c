"""Batches for search: the whole uint8 set kept on the device and augmented there as tensor ops.

Order and augmentation are pure functions of (seed, stream, epoch, batch index): no iterator state
has to be saved for an exact resume, mid-epoch included, and ranks shard the same permutation.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sldarts.data.readers import ArrayData, DatasetInfo, center_crop
from sldarts.errors import SldartsError


def _seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64 style), stable across runs and machines."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h ^= (int(p) + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2)) & 0xFFFFFFFFFFFFFFFF
        h = (h * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _mine(draw: Tensor, share: tuple[int, int]) -> Tensor:
    """This rank's part of random draws made for the whole global batch (rank r takes every world-th)."""
    rank, world = share
    return draw[rank::world] if world > 1 else draw


def cutout_batch(x: Tensor, length: int, gen: torch.Generator, total: int = 0,
                 share: tuple[int, int] = (0, 1)) -> Tensor:
    """Zero one length x length square per image, centred uniformly at random and clipped (DeVries & Taylor).
    ``total``/``share``: draw for the global batch of ``total`` images and keep rank/world's share of them."""
    b, _, h, w = x.shape
    n = total or b
    cy = _mine(torch.randint(0, h, (n, 1, 1), generator=gen, device=x.device), share)
    cx = _mine(torch.randint(0, w, (n, 1, 1), generator=gen, device=x.device), share)
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    half = length // 2
    inside = (ys >= cy - half) & (ys < cy - half + length) & (xs >= cx - half) & (xs < cx - half + length)
    return x * (~inside)[:, None].to(x.dtype)


def augment_batch(x: Tensor, pad: int, flip: bool, gen: torch.Generator, total: int = 0,
                  share: tuple[int, int] = (0, 1)) -> Tensor:
    """Random crop with zero padding and horizontal flip, per sample, without a Python loop. ``total``/``share``:
    draw for the global batch and keep this rank's share, so that N processes augment as one process does."""
    b, _, h, w = x.shape
    n = total or b
    if pad > 0:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = _mine(torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device), share)
        ox = _mine(torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=x.device), share)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if flip:
        mask = _mine(torch.rand(n, generator=gen, device=x.device), share) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x


def resized_crop_batch(x: Tensor, flip: bool, gen: torch.Generator, scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3)) -> Tensor:
    """Inception-style random-resized crop (+ flip) of every image of a batch, as tensor ops: a box of a
    random share of the area and aspect ratio (clipped to the image), resampled bilinearly to the full size.
    The streamed path draws the same kind of box from the decoded file."""
    b, _, h, w = x.shape
    dev = x.device
    area = torch.empty(b, device=dev).uniform_(*scale, generator=gen)
    logr = torch.empty(b, device=dev).uniform_(float(np.log(ratio[0])), float(np.log(ratio[1])), generator=gen)
    cw = (area * logr.exp()).sqrt().clamp(max=1.0)  # box width and height, as shares of the image's
    ch = (area / logr.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, device=dev, generator=gen) * (1 - cw) + cw / 2) * 2 - 1  # box centre in [-1, 1]
    cy = (torch.rand(b, device=dev, generator=gen) * (1 - ch) + ch / 2) * 2 - 1
    sx = torch.where(torch.rand(b, device=dev, generator=gen) < 0.5, -cw, cw) if flip else cw
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta, [b, x.shape[1], h, w], align_corners=False)
    return torch.nn.functional.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


class _Sharded:
    """Batch ``k`` of an epoch is the k-th slice of ``batch_size x world`` of the epoch's permutation, and
    rank r takes every world-th sample of it: a run over N processes sees, step by step, the very samples
    one process sees with the global batch, so its gradients (averaged by DDP) are the same."""

    batch_size: int
    world: int
    rank: int

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        step = self.batch_size * self.world
        full, rest = divmod(self.num_samples, step)
        # a last batch with fewer than 2 samples per rank breaks BatchNorm: drop it
        return max(full + (rest >= 2 * self.world), 1)

    def _mine(self, order, k: int):
        """This rank's part of global batch ``k`` of an epoch's ``order``."""
        step = self.batch_size * self.world
        return order[k * step:(k + 1) * step][self.rank::self.world]


STREAMS = {1: "training data", 2: "α data", 3: "test data"}  # data.TRAIN, ARCH, EVAL


def check_labels(labels: Any, num_classes: int, where: str, index: Any = None) -> None:
    """Every label in [0, num_classes): else one line naming the first offending item (a label outside the
    range would be a crash on GPU, or a silent miss in the accuracy)."""
    y = np.asarray(labels).reshape(-1)
    if not num_classes or not len(y):
        return
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        i = int(bad[0]) if index is None else int(np.asarray(index)[bad[0]])
        raise SldartsError(f"{where}: item {i} has label {int(y[bad[0]])}, outside the {num_classes} classes "
                           f"0..{num_classes - 1} ({len(bad)} such labels); fix the labels or the class count")


class TensorLoader(_Sharded):
    """Seeded, shardable, random-access batches from an in-memory uint8 set."""

    def __init__(self, data: ArrayData, info: DatasetInfo, batch_size: int, device: torch.device | str,
                 *, augment: bool, shuffle: bool, seed: int, stream: int, rank: int = 0, world: int = 1,
                 channels_last: bool = False, cutout: int = 0) -> None:
        self.device = torch.device(device)
        self.cutout = cutout
        check_labels(np.asarray(data.y), info.num_classes, STREAMS.get(stream, "data"))
        self.x = torch.from_numpy(np.ascontiguousarray(data.x)).to(self.device)
        self.y = torch.from_numpy(np.ascontiguousarray(data.y)).to(self.device)
        self.info = info
        self.batch_size = batch_size
        self.augment, self.shuffle = augment, shuffle
        self.seed, self.stream = seed, stream
        self.rank, self.world = rank, world
        self.channels_last = channels_last
        c = self.x.shape[1]
        self.mean = torch.tensor(info.mean[:c], device=self.device).view(1, c, 1, 1) * 255.0
        self.std = torch.tensor(info.std[:c], device=self.device).view(1, c, 1, 1) * 255.0
        self._perm_epoch: int | None = None
        self._perm: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return len(self.y)

    def _order(self, epoch: int) -> Tensor:
        if self._perm_epoch != epoch:
            n = self.num_samples
            if self.shuffle:
                g = torch.Generator().manual_seed(_seed(self.seed, self.stream, epoch))
                perm = torch.randperm(n, generator=g)
            else:
                perm = torch.arange(n)
            self._perm = perm.to(self.device)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def batch(self, epoch: int, k: int) -> tuple[Tensor, Tensor]:
        """Batch ``k`` (taken modulo the epoch length) of ``epoch``: normalised float images, labels."""
        k %= len(self)
        order = self._order(epoch)
        sel = self._mine(order, k)
        x = self.x.index_select(0, sel)
        g = None
        # random draws for the whole global batch, this rank's share kept: N processes augment as one does
        total = len(order[k * self.batch_size * self.world:(k + 1) * self.batch_size * self.world])
        share = (self.rank, self.world)
        if self.augment:
            g = torch.Generator(device=self.device).manual_seed(_seed(self.seed, self.stream, epoch, k, 1))
            x = (resized_crop_batch(x, self.info.flip, g) if self.info.resized_crop
                 else augment_batch(x, self.info.pad, self.info.flip, g, total, share))
        x = (x.float() - self.mean) / self.std
        if self.cutout and g is not None:  # after normalisation, as in DARTS: the square becomes 0
            x = cutout_batch(x, self.cutout, g, total, share)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.y.index_select(0, sel)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        for k in range(start, len(self)):
            yield self.batch(epoch, k)


class _FolderDataset(torch.utils.data.Dataset):
    """Decode + augment one image; randomness seeded by (seed, stream, epoch, index) for exact resume."""

    def __init__(self, files: list, labels: list[int], size: int, train: bool, seed: int, stream: int,
                 jitter: float = 0.0, crop_pct: float = 0.875) -> None:
        self.files, self.labels, self.size, self.train, self.crop_pct = files, labels, size, train, crop_pct
        self.seed, self.stream, self.jitter = seed, stream, jitter

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, int]:
        from sldarts.data.readers import _decode_pil

        epoch, i = key
        rng = np.random.default_rng(_seed(self.seed, self.stream, epoch, i))
        im = _decode_pil(self.files[i])
        im = random_resized_crop(im, self.size, rng) if self.train else center_crop(im, self.size, self.crop_pct)
        if self.train and self.jitter > 0:
            im = color_jitter(im, self.jitter, rng)
        arr = np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
        if self.train and rng.random() < 0.5:
            arr = arr[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(arr)), self.labels[i]


def random_resized_crop(im, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Inception-style crop (the ImageNet recipe), with numpy randomness so workers stay reproducible."""
    from PIL import Image

    w, h = im.size
    area = w * h
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = float(np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1]))))
        cw, ch = int(round((target * aspect) ** 0.5)), int(round((target / aspect) ** 0.5))
        if 0 < cw <= w and 0 < ch <= h:
            x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            return im.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
    return center_crop(im, size)


def color_jitter(im, strength: float, rng: np.random.Generator):
    """Brightness, contrast and saturation factors drawn from [1-s, 1+s], in random order, and a hue
    shift of up to s/2 of the circle (P-DARTS: ColorJitter(0.4, 0.4, 0.4, 0.2))."""
    from PIL import ImageEnhance

    for k in rng.permutation(3):
        enhancer = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[int(k)]
        im = enhancer(im).enhance(float(rng.uniform(1 - strength, 1 + strength)))
    shift = int(round(rng.uniform(-strength / 2, strength / 2) * 255))
    if shift:
        h, s, v = im.convert("HSV").split()
        h = h.point(lambda p: (p + shift) % 256)
        from PIL import Image

        im = Image.merge("HSV", (h, s, v)).convert("RGB")
    return im


class StreamLoader:
    """ImageNet-sized folders: worker processes decode JPEGs; same (epoch, start) interface."""

    def __init__(self, files: list, labels: list[int], info: DatasetInfo, batch_size: int,
                 device: torch.device | str, *, train: bool, seed: int, stream: int, size: int = 224,
                 workers: int = 4, rank: int = 0, world: int = 1, channels_last: bool = False,
                 jitter: float = 0.0, crop_pct: float = 0.875) -> None:
        self.ds = _FolderDataset(files, labels, size, train, seed, stream, jitter, crop_pct)
        self.info, self.batch_size, self.device = info, batch_size, torch.device(device)
        self.train, self.seed, self.stream = train, seed, stream
        self.workers, self.rank, self.world = workers, rank, world
        self.channels_last = channels_last
        self.mean = torch.tensor(info.mean, device=self.device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(info.std, device=self.device).view(1, 3, 1, 1) * 255.0

    @property
    def num_samples(self) -> int:
        return len(self.ds)

    def __len__(self) -> int:
        return max(-(-(self.num_samples // self.world) // self.batch_size), 1)

    def _batches(self, epoch: int, start: int) -> list[list[tuple[int, int]]]:
        n = self.num_samples
        perm = (torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, self.stream, epoch)))
                if self.train else torch.arange(n))
        per = n // self.world
        mine = perm[self.rank * per:(self.rank + 1) * per].tolist()
        out = [mine[k:k + self.batch_size] for k in range(0, len(mine), self.batch_size)]
        return [[(epoch, i) for i in b] for b in out[start:]]

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        loader = torch.utils.data.DataLoader(
            self.ds, batch_sampler=self._batches(epoch, start), num_workers=self.workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=torch.Generator().manual_seed(0),  # not the global RNG: resume stays exact
        )
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            x = (x.float() - self.mean) / self.std
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


class Cycle:
    """Endless batches for the α step, positioned by the global step so resume needs no saved state."""

    def __init__(self, loader: TensorLoader | StreamLoader, start_step: int = 0) -> None:
        self.loader = loader
        self.epoch, self.k = divmod(start_step, len(loader))
        self._it = loader.epoch(self.epoch, self.k)

    def __next__(self) -> tuple[Tensor, Tensor]:
        try:
            return next(self._it)
        except StopIteration:
            self.epoch += 1
            self._it = self.loader.epoch(self.epoch, 0)
            return next(self._it)


class _SeededItems(torch.utils.data.Dataset):
    """Item ``i`` of epoch ``e`` with Python's, NumPy's and torch's global generators seeded by (seed, stream,
    e, i) and restored afterwards: a user's random transforms become a function of (seed, epoch, index), so
    resume is exact and workers give the same batches as the main process."""

    def __init__(self, ds, seed: int, stream: int) -> None:
        self.ds, self.seed, self.stream = ds, seed, stream

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        import random

        epoch, i = key
        s = _seed(self.seed, self.stream, epoch, i)
        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(s)
            random.seed(s)
            np.random.seed(s % 2**32)
            try:
                item = self.ds[i]
            finally:
                random.setstate(py)
                np.random.set_state(npy)
        return _as_pair(item, i)


def _as_pair(item, i: int, where: str = "dataset", classification: bool = False) -> tuple[Tensor, Tensor]:
    """(float input tensor, label) from ``(tensor, int)`` or a pair of tensors; one line otherwise. A one-value
    integer label becomes an int64 scalar (a class); any other label tensor (regression, multi-label, masks)
    is kept as it is, unless ``classification`` asks for a class index."""
    ok = isinstance(item, (tuple, list)) and len(item) == 2
    x, y = item if ok else (None, None)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if isinstance(y, (int, np.integer)) and not isinstance(y, bool):
        y = torch.tensor(int(y))
    elif isinstance(y, (float, np.floating)):
        y = torch.tensor(float(y))
    is_class = isinstance(y, Tensor) and y.numel() == 1 and not y.is_floating_point() and not y.is_complex()
    if not (ok and isinstance(x, Tensor) and isinstance(y, Tensor)) or (classification and not is_class):
        shape = f" of shape {tuple(y.shape)}" if isinstance(y, Tensor) else ""
        got = (f"({type(item[0]).__name__}, {type(item[1]).__name__}{shape})" if isinstance(item, (tuple, list))
               else type(item).__name__)
        raise SldartsError(f"{where}[{i}] returned {got}; a data set must return (tensor, int) or "
                           "(tensor, integer tensor) (other labels need loss=, e.g. loss=mse)")
    return (x if x.is_floating_point() else x.float()), (y.reshape(()).long() if is_class else y)


def check_dataset(ds, where: str, classification: bool = True) -> None:
    """A map-style dataset with at least one item of the right types, or one clear line."""
    if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
        raise SldartsError(f"{where} is a {type(ds).__name__}, not a map-style dataset (__getitem__ and __len__)")
    if len(ds) < 2:
        raise SldartsError(f"{where} has {len(ds)} items; a search needs at least 2")
    _as_pair(ds[0], 0, where, classification)


def dataset_info(ds, name: str) -> DatasetInfo:
    """Classes from ``classes``/``num_classes``/``targets`` attributes, else from the labels themselves;
    channels from the first input."""
    x, _ = _as_pair(ds[0], 0)
    base = getattr(ds, "dataset", ds)  # torch.utils.data.Subset
    names = tuple(str(c) for c in getattr(base, "classes", ()) or ())
    n = len(names) or getattr(base, "num_classes", 0)
    if not n:
        targets = getattr(base, "targets", None)
        labels = (torch.as_tensor(targets) if targets is not None
                  else torch.stack([_as_pair(ds[i], i)[1] for i in range(len(ds))]))
        n = int(labels.max()) + 1 if labels.dim() == 1 and not labels.is_floating_point() else 0  # 0: no classes
    return DatasetInfo(name, int(n), int(x.shape[0]) if x.dim() >= 2 else 1, classes=names)


class DatasetLoader(_Sharded):
    """Seeded, shardable batches from any map-style dataset (the same (epoch, start) interface as the
    other loaders). ``workers > 0`` fetches in worker processes, with identical results."""

    num_classes = 0  # when set, every batch's labels are checked against it (on the CPU, before the copy)

    def __init__(self, ds, indices: np.ndarray, batch_size: int, device: torch.device | str, *, shuffle: bool,
                 seed: int, stream: int, rank: int = 0, world: int = 1, channels_last: bool = False,
                 workers: int = 0) -> None:
        self.ds = _SeededItems(ds, seed, stream)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.seed, self.stream = shuffle, seed, stream
        # more processes than cores only slow the fetching down
        self.rank, self.world, self.workers = rank, world, min(workers, len(os.sched_getaffinity(0)))
        self.channels_last = channels_last

    @property
    def num_samples(self) -> int:
        return len(self.indices)

    def _batches(self, epoch: int, start: int) -> list[list[tuple[int, int]]]:
        n = self.num_samples
        perm = (torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, self.stream, epoch)))
                if self.shuffle else torch.arange(n))
        order = self.indices[perm.numpy()].tolist()
        return [[(epoch, i) for i in self._mine(order, k)] for k in range(start, len(self))]

    def _to_device(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        batches = self._batches(epoch, start)
        if self.workers == 0:
            for b in batches:
                xs, ys = zip(*(self.ds[key] for key in b), strict=True)
                y = torch.stack(ys)
                check_labels(y.numpy(), self.num_classes, STREAMS.get(self.stream, "data"), [i for _, i in b])
                yield self._to_device(torch.stack(xs), y)
            return
        # the loader's own generator: creating it must not draw from the global RNG (exact resume)
        loader = torch.utils.data.DataLoader(self.ds, batch_sampler=batches, num_workers=self.workers,
                                             generator=torch.Generator().manual_seed(0),
                                             pin_memory=self.device.type == "cuda")
        for b, (x, y) in zip(batches, loader, strict=True):
            check_labels(y.numpy(), self.num_classes, STREAMS.get(self.stream, "data"), [i for _, i in b])
            yield self._to_device(x, y)
