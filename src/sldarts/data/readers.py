"""Readers for the on-disk formats, each returning uint8 image arrays and int64 labels.

Readers never download: a missing data set's error names the command that fetches it (data/download.py). Pickles
(CIFAR, ImageNet16) are read with an unpickler that only rebuilds numpy arrays and plain containers.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sldarts.errors import SldartsError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class DatasetInfo:
    """What the model and the augmentation need to know about a data set."""

    name: str
    num_classes: int
    in_channels: int
    mean: tuple[float, ...] = ()  # per channel, for uint8 sets normalised on the device
    std: tuple[float, ...] = ()
    pad: int = 0  # random-crop padding during search
    flip: bool = False
    classes: tuple[str, ...] = ()  # class names, where the data set has them (image folders)
    resized_crop: bool = False  # training crops: random-resized (image folders) instead of padded random crops


@dataclass
class ArrayData:
    x: np.ndarray  # uint8, (N, C, H, W)
    y: np.ndarray  # int64, (N,)


CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
C100_MEAN, C100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
IN_MEAN, IN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IN16_MEAN, IN16_STD = (0.4811, 0.4575, 0.4078), (0.2605, 0.2533, 0.2683)


class _SafeUnpickler(pickle.Unpickler):
    """Rebuild numpy arrays and builtin containers only; anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("builtins", "list"), ("builtins", "dict"),
        ("_codecs", "encode"), ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("builtins", "object"), ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _SafeUnpickler(io.BytesIO(f.read()), encoding="latin1").load()
    except FileNotFoundError:
        raise SldartsError(f"data file {path} is missing") from None
    except Exception as exc:  # truncated/garbage pickles raise many types
        raise SldartsError(f"data file {path} is unreadable or truncated ({type(exc).__name__}); "
                           "re-extract the archive") from None
    if not isinstance(obj, dict):
        raise SldartsError(f"data file {path} does not hold a dict of data/labels")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _rows_to_images(data, path: Path, side: int) -> np.ndarray:
    try:
        arr = np.asarray(data, dtype=np.uint8)
        return arr.reshape(-1, 3, side, side)
    except (ValueError, TypeError):
        raise SldartsError(f"data file {path}: 'data' is not rows of 3x{side}x{side} uint8 pixels") from None


def _labels(values, path: Path, n: int) -> np.ndarray:
    try:
        y = np.asarray(values, dtype=np.int64).reshape(-1)
    except (ValueError, TypeError):
        raise SldartsError(f"data file {path}: labels are not integers") from None
    if len(y) != n:
        raise SldartsError(f"data file {path}: {n} images but {len(y)} labels")
    return y


def _find_dir(root: Path, name: str, probe: str) -> Path:
    for cand in (root / name, root):
        if (cand / probe).exists():
            return cand
    get = {"cifar-10-batches-py": f"get it with: sldarts data download cifar10 --root {root}",
           "cifar-100-python": f"get it with: sldarts data download cifar100 --root {root}"}.get(
        name, "sldarts data info imagenet16-120 says where to get it")
    raise SldartsError(f"data set not found: expected {root / name / probe} (the standard python-pickle "
                       f"'{name}' folder) under data_root={root}; {get}")


def _read_batches(folder: Path, files: list[str], label_key: str) -> ArrayData:
    xs, ys = [], []
    for name in files:
        d = read_pickle(folder / name)
        if "data" not in d or label_key not in d:
            raise SldartsError(f"data file {folder / name} lacks the 'data' or '{label_key}' entry")
        x = _rows_to_images(d["data"], folder / name, 32)
        xs.append(x)
        ys.append(_labels(d[label_key], folder / name, len(x)))
    return ArrayData(np.concatenate(xs), np.concatenate(ys))


def _check_labels(data: ArrayData, num_classes: int, where: str) -> None:
    if len(data.y) and (data.y.min() < 0 or data.y.max() >= num_classes):
        raise SldartsError(f"{where}: labels must lie in 0..{num_classes - 1}")


def read_cifar10(root: Path) -> tuple[ArrayData, ArrayData]:
    d = _find_dir(root, "cifar-10-batches-py", "data_batch_1")
    train = _read_batches(d, [f"data_batch_{i}" for i in range(1, 6)], "labels")
    test = _read_batches(d, ["test_batch"], "labels")
    for part in (train, test):
        _check_labels(part, 10, str(d))
    return train, test


def read_cifar100(root: Path) -> tuple[ArrayData, ArrayData]:
    d = _find_dir(root, "cifar-100-python", "train")
    train, test = _read_batches(d, ["train"], "fine_labels"), _read_batches(d, ["test"], "fine_labels")
    for part in (train, test):
        _check_labels(part, 100, str(d))
    return train, test


def read_imagenet16(root: Path, classes: int = 120) -> tuple[ArrayData, ArrayData]:
    """Downsampled ImageNet 16x16 (Chrabaszcz et al.): labels 1..1000; keep the first ``classes``."""
    d = _find_dir(root, "ImageNet16", "train_data_batch_1")

    def read(names: list[str]) -> ArrayData:
        xs, ys = [], []
        for name in names:
            p = d / name
            raw = read_pickle(p)
            if "data" not in raw or "labels" not in raw:
                raise SldartsError(f"data file {p} lacks the 'data' or 'labels' entry")
            x = _rows_to_images(raw["data"], p, 16)
            y = _labels(raw["labels"], p, len(x)) - 1
            keep = (y >= 0) & (y < classes)
            xs.append(x[keep])
            ys.append(y[keep])
        return ArrayData(np.concatenate(xs), np.concatenate(ys))

    return read([f"train_data_batch_{i}" for i in range(1, 11)]), read(["val_data"])


def read_digits() -> tuple[ArrayData, ArrayData]:
    """scikit-learn's bundled 8x8 digits (offline): a fixed 1500/297 train/test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.clip(bunch.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    order = np.random.RandomState(0).permutation(len(y))
    tr, te = order[:1500], order[1500:]
    return ArrayData(x[tr], y[tr]), ArrayData(x[te], y[te])


def list_image_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    if not folder.is_dir():
        raise SldartsError(f"image folder {folder} is missing: expected {folder}/<class>/*.jpg|png")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for k, c in enumerate(classes):
        for f in sorted((folder / c).iterdir()):
            if f.suffix.lower() in IMAGE_EXTS:
                files.append(f)
                labels.append(k)
    if not files:
        raise SldartsError(f"image folder {folder} holds no images: expected {folder}/<class>/*.jpg|png")
    return files, labels, classes


def _decode_pil(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise SldartsError(f"image {path} cannot be decoded ({type(exc).__name__}); remove or replace it") from None


def center_crop(im, size: int, crop_pct: float = 1.0):
    """Resize the shorter side to ``size / crop_pct`` (bilinear), then take the central size x size square:
    the one evaluation rule of every path (in memory, streamed, retrain, predict)."""
    from PIL import Image

    w, h = im.size
    short = int(round(size / crop_pct))
    s = short / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)
    x0, y0 = (nw - size) // 2, (nh - size) // 2
    return im.crop((x0, y0, x0 + size, y0 + size)) if (nw, nh) != (size, size) else im


def _decode(path: Path, side: int, crop_pct: float = 1.0) -> np.ndarray:
    return np.asarray(center_crop(_decode_pil(path), side, crop_pct), dtype=np.uint8).transpose(2, 0, 1)


def short_side(path: Path) -> int:
    """The shorter side of an image (the default ``image_size`` of a folder: its first image's)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return min(im.size)
    except Exception as exc:
        raise SldartsError(f"image {path} cannot be decoded ({type(exc).__name__}); remove or replace it") from None


@dataclass
class FolderSplits:
    """An image folder's splits: ``train/`` (+ ``val/``, + ``test/``), or one folder of class folders."""

    classes: list[str]
    train: tuple[list[Path], list[int]]
    valid: tuple[list[Path], list[int]] | None
    test: tuple[list[Path], list[int]] | None
    where: dict[str, str]  # split -> the folder it comes from


def folder_splits(root: Path) -> FolderSplits:
    """``root/train`` with optional ``root/val`` and ``root/test``; without ``train/``, ``root`` itself holds
    the class folders (a validation split is then held out of it)."""
    root = Path(root)
    if not (root / "train").is_dir():
        files, labels, classes = list_image_folder(root)
        return FolderSplits(classes, (files, labels), None, None, {"train": str(root)})
    files, labels, classes = list_image_folder(root / "train")
    parts: dict[str, tuple[list[Path], list[int]] | None] = {}
    where = {"train": str(root / "train")}
    for name, sub in (("valid", "val"), ("test", "test")):
        parts[name] = None
        if (root / sub).is_dir():
            f, y, c = list_image_folder(root / sub)
            if c != classes:
                raise SldartsError(f"image folders {root}/train and {root / sub} have different class folders")
            parts[name], where[name] = (f, y), str(root / sub)
    return FolderSplits(classes, (files, labels), parts["valid"], parts["test"], where)


def holdout(labels, frac: float) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held-out) indices: ``frac`` of each class held out (at least one of a class of 2 or more; the
    same images for every seed, so runs with different seeds are compared on one validation set). Labels
    that are not class indices (regression) are held out unstratified."""
    labels = np.asarray(labels)
    rng = np.random.RandomState(0)
    groups = ([np.flatnonzero(labels == c) for c in np.unique(labels)]
              if labels.ndim == 1 and labels.dtype.kind in "iu" else [np.arange(len(labels))])
    keep, held = [], []
    for idx in groups:
        idx = idx[rng.permutation(len(idx))]
        k = min(max(int(round(frac * len(idx))), 1), len(idx) - 1) if frac > 0 and len(idx) >= 2 else 0
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def decode_files(files: list[Path], side: int, crop_pct: float = 1.0) -> np.ndarray:
    """Images decoded once into a uint8 (N, 3, side, side) array (shorter side resized, centre crop) and
    cached as .npz keyed by the file list, so later runs start in seconds."""
    key = hashlib.sha1(f"side={side} crop={crop_pct}".encode())
    for f in files:
        st = f.stat()
        key.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    cache = _cache_dir() / f"imagefolder-{key.hexdigest()[:16]}.npz"
    if cache.exists():
        try:
            return np.load(cache)["x"]
        except Exception:
            pass  # a broken cache is rebuilt
    if not files:
        return np.zeros((0, 3, side, side), np.uint8)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        x = np.stack(list(pool.map(lambda f: _decode(f, side, crop_pct), files)))
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, x=x)
        os.replace(tmp, cache)
    except OSError:
        pass  # caching is an optimisation only
    return x


def _cache_dir() -> Path:
    return Path(os.environ.get("SLDARTS_CACHE", Path.home() / ".cache" / "sldarts"))


def read_image_folder(root: Path, side: int = 0) -> tuple[ArrayData, ArrayData, list[str]]:
    """All of ``train/`` and the ``test/`` (else ``val/``) split in memory, at ``side`` (0: the first image's
    shorter side); an empty second part where the folder has neither."""
    sp = folder_splits(root)
    side = side or short_side(sp.train[0][0])
    other = sp.test or sp.valid or ([], [])
    return (ArrayData(decode_files(sp.train[0], side), np.asarray(sp.train[1], dtype=np.int64)),
            ArrayData(decode_files(other[0], side), np.asarray(other[1], dtype=np.int64)), sp.classes)
