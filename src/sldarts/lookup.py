"""NAS-Bench-201 look-ups: the benchmark's accuracies of a derived cell, from any of its file formats.

Definitions (as the paper's Table 3 and the NAS-Bench-201 paper use them), all 200-epoch results
(``hp='200'``) averaged over the benchmark's seeds:

- CIFAR-10 *valid*: data set ``cifar10-valid`` (trained on 25k images), ``valid-accuracy`` (the other 25k).
- CIFAR-10 *test*: data set ``cifar10`` (trained on all 50k), ``test-accuracy`` (the original test set).
- CIFAR-100 and ImageNet16-120 *valid* / *test*: ``valid-accuracy`` / ``test-accuracy``, i.e. the
  x-valid / x-test halves of the original test set.

Formats, chosen by what PATH is: a CSV table (columns ``index, arch`` and ``<dataset>_<split>``
accuracy columns), NATS-Bench topology files (``NATS-tss-v1_0-3ffb9-simple/`` or ``.pickle.pbz2``, via
the optional ``nats_bench`` package) and the legacy NAS-Bench-201 ``.pth`` (via ``nas_201_api``).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import Any

from sldarts.errors import SldartsError

BENCHMARK_SETS = ("cifar10", "cifar100", "imagenet16-120")
SPLITS = ("valid", "test")
ENV = "SLDARTS_NB201"  # environment variable naming the benchmark
# (dataset, split) -> (benchmark's data set name, metric key)
QUERIES = {
    ("cifar10", "valid"): ("cifar10-valid", "valid-accuracy"),
    ("cifar10", "test"): ("cifar10", "test-accuracy"),
    ("cifar100", "valid"): ("cifar100", "valid-accuracy"),
    ("cifar100", "test"): ("cifar100", "test-accuracy"),
    ("imagenet16-120", "valid"): ("ImageNet16-120", "valid-accuracy"),
    ("imagenet16-120", "test"): ("ImageNet16-120", "test-accuracy"),
}


def _column(dataset: str, split: str) -> str:
    return f"{dataset.replace('-', '_')}_{split}"


class Benchmark:
    """Accuracies (percent) of NB201 cells: ``query(arch)`` and ``optimal()``."""

    path: Path

    def query(self, arch: str) -> dict[str, Any]:
        raise NotImplementedError

    def archs(self) -> list[str]:
        raise NotImplementedError

    def optimal(self) -> dict[str, Any]:
        """The best valid / test accuracy in the benchmark for each data set (the tables' last row)."""
        results = [self.query(a) for a in self.archs()]
        out: dict[str, Any] = {"index": None, "arch": "optimal"}
        for d in BENCHMARK_SETS:
            out[d] = {}
            for s in SPLITS:
                vals = [r[d][s] for r in results if r[d][s] is not None]
                out[d][s] = max(vals) if vals else None
        return out


class CsvBenchmark(Benchmark):
    """The plain table format (e.g. ``nb201_accuracy.csv``); missing columns are reported as None."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                if "arch" not in fields or "index" not in fields:
                    raise SldartsError(f"benchmark table {path} needs 'index' and 'arch' columns, has {fields}")
                self.rows = {}
                for row in reader:
                    self.rows[row["arch"]] = row
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise SldartsError(f"cannot read benchmark table {path}: {exc}") from None
        self.columns = {(d, s): _column(d, s) for d in BENCHMARK_SETS for s in SPLITS if _column(d, s) in fields}

    def _value(self, row: dict[str, str], key: tuple[str, str]) -> float | None:
        col = self.columns.get(key)
        if col is None or row.get(col) in (None, ""):
            return None
        try:
            return float(row[col])
        except ValueError:
            raise SldartsError(f"benchmark table {self.path}: {col}={row[col]!r} is not a number") from None

    def query(self, arch: str) -> dict[str, Any]:
        row = self.rows.get(arch)
        if row is None:
            raise SldartsError(f"arch {arch} is not in the benchmark {self.path}")
        out: dict[str, Any] = {"index": int(row["index"]), "arch": arch}
        for d in BENCHMARK_SETS:
            out[d] = {s: self._value(row, (d, s)) for s in SPLITS}
        return out

    def archs(self) -> list[str]:
        return list(self.rows)


class ApiBenchmark(Benchmark):
    """NATS-Bench (``nats_bench``) or NAS-Bench-201 (``nas_201_api``): same query interface."""

    def __init__(self, path: Path, api: Any) -> None:
        self.path, self.api = path, api
        self._all: dict[int, dict[str, Any]] | None = None

    def _get(self, index: int, key: tuple[str, str]) -> float | None:
        name, metric = QUERIES[key]
        try:
            info = self.api.get_more_info(index, name, hp="200", is_random=False)
        except (KeyError, ValueError):
            return None
        value = info.get(metric)
        return None if value is None else float(value)

    def query(self, arch: str) -> dict[str, Any]:
        index = self.api.query_index_by_arch(arch)
        if index is None or index < 0:
            raise SldartsError(f"arch {arch} is not in the benchmark {self.path}")
        out: dict[str, Any] = {"index": int(index), "arch": arch}
        for d in BENCHMARK_SETS:
            out[d] = {s: self._get(index, (d, s)) for s in SPLITS}
        return out

    def archs(self) -> list[str]:
        return list(self.api.meta_archs)


def open_benchmark(path: str | Path | None) -> Benchmark:
    """Open the benchmark at PATH (or $SLDARTS_NB201), choosing the reader by what the path is."""
    if path is None or str(path) == "":
        path = os.environ.get(ENV)
    if not path:
        raise SldartsError(f"no NAS-Bench-201 benchmark given: pass --benchmark PATH, set {ENV}, or set "
                           "benchmark=PATH in the config")
    p = Path(path)
    if not p.exists():
        raise SldartsError(f"benchmark {p} does not exist")
    name = p.name
    if p.suffix == ".csv":
        return CsvBenchmark(p)
    nats_dir = p.is_dir() and (p / "meta.pickle.pbz2").exists()
    if name.startswith("NATS-tss") or name.endswith(".pickle.pbz2") or nats_dir:
        try:
            from nats_bench import create
        except ImportError:
            raise SldartsError("reading NATS-Bench files needs the nats_bench package: "
                               "pip install -e '.[nats]' in the sldarts clone") from None
        try:
            api = create(str(p), "tss", fast_mode=p.is_dir(), verbose=False)
        except Exception as exc:
            raise SldartsError(f"cannot read NATS-Bench benchmark {p}: {exc}") from None
        return ApiBenchmark(p, api)
    if p.suffix == ".pth":
        try:
            from nas_201_api import NASBench201API
        except ImportError:
            raise SldartsError("reading NAS-Bench-201 .pth files needs the nas_201_api package: "
                               "pip install nas-bench-201") from None
        import torch

        warnings.warn(f"{p} is a pickle: loading it can run code; only load benchmark files you trust",
                      stacklevel=2)
        try:
            data = torch.load(p, map_location="cpu", weights_only=False)
            api = NASBench201API(data, verbose=False)
        except Exception as exc:
            raise SldartsError(f"cannot read NAS-Bench-201 benchmark {p}: {exc}") from None
        return ApiBenchmark(p, api)
    raise SldartsError(f"benchmark {p}: unknown format; expected a .csv table, NATS-tss files or a .pth file")


def table3(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The paper's Table 3 layout: CIFAR-10, CIFAR-100, ImageNet16-120, each valid and test."""
    lines = ["| Method | CIFAR-10 valid | CIFAR-10 test | CIFAR-100 valid | CIFAR-100 test | "
             "ImageNet16-120 valid | ImageNet16-120 test |", "| --- |" + " --- |" * 6]
    for name, r in rows:
        cells = [r[d][s] for d in BENCHMARK_SETS for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)
