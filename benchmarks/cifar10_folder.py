"""Build the CPU experiments' image folders from CIFAR-10 itself (docs/analysis.md, docs/methods.md).

Reads the official python batches (get them with `sldarts data download cifar10 --root DATA`) and writes
`OUT/train/<class>/NNNN.png` (5,000 a class) and `OUT/test/<class>/NNNN.png` (1,000 a class), numbered
in the order the batches hold them; the experiments then take their subsets (train_samples=, eval_samples=)
with sldarts's fixed permutation. PNG is lossless: the pixels are CIFAR-10's own.

    python benchmarks/cifar10_folder.py DATA OUT [--per-class N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from sldarts.data import CIFAR10_CLASSES
from sldarts.data.readers import read_cifar10


def build(root: Path, out: Path, per_class: int = 0) -> dict[str, int]:
    """Write the folders; returns the number of images written per split."""
    train, test = read_cifar10(root)
    written = {}
    for split, data in (("train", train), ("test", test)):
        counts = [0] * len(CIFAR10_CLASSES)
        for name in CIFAR10_CLASSES:  # every class folder in both splits, as the reader expects
            (out / split / name).mkdir(parents=True, exist_ok=True)
        for x, y in zip(data.x, data.y, strict=True):
            y = int(y)
            if per_class and counts[y] >= per_class:
                continue
            folder = out / split / CIFAR10_CLASSES[y]
            Image.fromarray(x.transpose(1, 2, 0)).save(folder / f"{counts[y]:04d}.png")
            counts[y] += 1
        written[split] = sum(counts)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data_root", type=Path, help="the folder holding cifar-10-batches-py/")
    ap.add_argument("out", type=Path, help="where to write train/ and test/")
    ap.add_argument("--per-class", type=int, default=0, help="at most N images a class and split (0: all)")
    args = ap.parse_args()
    print(build(args.data_root, args.out, args.per_class))


if __name__ == "__main__":
    main()
