"""Writers of tiny data sets in the real on-disk formats (what torchvision / the benchmarks ship)."""

import pickle
from pathlib import Path

import numpy as np


def write_cifar10(root: Path, n_per_batch=6, protocol=2, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n_per_batch).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x,
                         b"filenames": [b"x.png"] * n_per_batch}, f, protocol=protocol)
        written[name] = (x, y)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(10)]}, f, protocol=protocol)
    return written


def write_cifar100(root: Path, n=8, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    written = {}
    for name in ("train", "test"):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        with open(d / name, "wb") as f:
            pickle.dump({"data": x, "fine_labels": fine, "coarse_labels": [0] * n}, f, protocol=4)
        written[name] = (x, fine)
    return written


def write_imagenet16(root: Path, n=10, seed=0) -> dict:
    """Downsampled-ImageNet 16x16 pickles: 'data' (N, 768) and 1-based 'labels' over 1000 classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        x = rng.integers(0, 256, (n, 768), dtype=np.uint8)
        y = [1, 120, 121, 1000, 5] + rng.integers(1, 1001, n - 5).tolist()
        with open(root / name, "wb") as f:
            pickle.dump({"data": x, "labels": y, "mean": x.mean(0)}, f, protocol=2)
        written[name] = (x, y)
    return written


def write_image_folder(root: Path, classes=("cat", "dog", "emu"), per_class=3, size=12, seed=0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
