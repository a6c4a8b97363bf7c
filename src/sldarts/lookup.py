"""NAS-Bench-201 look-ups: the benchmark's accuracies of a derived cell, from any of its file formats.

Definitions (as the paper's Table 3 and the NAS-Bench-201 paper use them), all 200-epoch results
(``hp='200'``) averaged over the benchmark's seeds:

- CIFAR-10 *valid*: data set ``cifar10-valid`` (trained on 25k images), ``valid-accuracy`` (the other 25k).
- CIFAR-10 *test*: data set ``cifar10`` (trained on all 50k), ``test-accuracy`` (the original test set).
- CIFAR-100 and ImageNet16-120 *valid* / *test*: ``valid-accuracy`` / ``test-accuracy``, i.e. the
  x-valid / x-test halves of the original test set.

With no PATH (and no ``$SLDARTS_NB201``) the table shipped in the package is read
(``sldarts/bench_data/nb201.csv.gz``, all 15,625 cells; its sources and licence are in PROVENANCE.md beside
it). Formats, chosen by what PATH is: a CSV table (``.csv`` or ``.csv.gz``; columns ``index, arch`` and
``<dataset>_<split>`` accuracy columns), NATS-Bench topology files (``NATS-tss-v1_0-3ffb9-simple/`` or
``.pickle.pbz2``, via the optional ``nats_bench`` package) and the legacy NAS-Bench-201 ``.pth`` (via
``nas_201_api``).

Benchmark files are pickles. They are read with an unpickler that rebuilds plain containers, numbers and
strings only; a file naming any other Python object is refused unless the caller passed ``trust=True``
(``trust=true`` in a config, ``--trust`` on the command line), since unpickling such a file runs code.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import os
import pickle
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from sldarts.errors import SldartsError

BENCHMARK_SETS = ("cifar10", "cifar100", "imagenet16-120")
SPLITS = ("valid", "test")
ENV = "SLDARTS_NB201"  # environment variable naming the benchmark
SHIPPED = "bench_data/nb201.csv.gz"  # the package's own table (inside the sldarts package)
# the columns of a full table, as `--export-csv` writes them from the official files
EXPORT_COLUMNS = ["index", "arch", "cifar10_valid", "cifar10_test", "cifar10_valid_ori_test", "cifar100_valid",
                  "cifar100_test", "imagenet16_120_valid", "imagenet16_120_test", "params_cifar10"]
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

    def __init__(self, path: Path | Any) -> None:
        self.path = path
        try:
            with path.open("rb") as raw:
                data = raw.read()
            if data[:2] == b"\x1f\x8b":  # gzip, whatever the name
                data = gzip.decompress(data)
            with io.StringIO(data.decode("utf-8"), newline="") as f:
                reader = csv.DictReader(f)
                fields = reader.fieldnames or []
                if "arch" not in fields or "index" not in fields:
                    raise SldartsError(f"benchmark table {path} needs 'index' and 'arch' columns, has {fields}")
                self.rows = {}
                for row in reader:
                    self.rows[row["arch"]] = row
        except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:
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
    """NATS-Bench (``nats_bench``) or NAS-Bench-201 (``nas_201_api``): same query interface.

    ``lazy_dir``: a NATS-Bench ``-simple`` folder whose per-cell files are read (safely) on first query."""

    def __init__(self, path: Path, api: Any, lazy_dir: Path | None = None, trust: bool = False) -> None:
        self.path, self.api, self.lazy_dir, self.trust = path, api, lazy_dir, trust

    def _prepare(self, index: int) -> None:
        """Put a cell's records into the API before it asks for them, so that it never unpickles a file."""
        if self.lazy_dir is None or index in self.api.arch2infos_dict:
            return
        from nats_bench.api_utils import ArchResults

        f = self.lazy_dir / f"{index:06d}.pickle.pbz2"
        infos = _records(_load_pickle(f if f.exists() else self.lazy_dir / f"{index}.pickle.pbz2", self.trust), f)
        self.api.arch2infos_dict[index] = {hp: ArchResults.create_from_state_dict(r) for hp, r in infos.items()}
        self.api.evaluated_indexes.add(index)
        self.api._avaliable_hps.update(infos)  # what the API's own reload records

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
        self._prepare(index)
        out: dict[str, Any] = {"index": int(index), "arch": arch}
        for d in BENCHMARK_SETS:
            out[d] = {s: self._get(index, (d, s)) for s in SPLITS}
        return out

    def extra(self, index: int) -> dict[str, float | None]:
        """The columns beyond Table 3 that the full table carries (see EXPORT_COLUMNS)."""
        self._prepare(index)
        out: dict[str, float | None] = {}
        try:
            out["cifar10_valid_ori_test"] = float(self.api.get_more_info(index, "cifar10-valid", hp="200",
                                                                         is_random=False)["test-accuracy"])
        except (KeyError, ValueError, TypeError):
            out["cifar10_valid_ori_test"] = None
        try:
            out["params_cifar10"] = float(self.api.get_cost_info(index, "cifar10", hp="200")["params"])
        except (KeyError, ValueError, TypeError):
            out["params_cifar10"] = None
        return out

    def archs(self) -> list[str]:
        return list(self.api.meta_archs)


class _Refused(Exception):
    """A pickle names an object outside the allow-list (the message is its module.name)."""


class _BenchUnpickler(pickle.Unpickler):
    """Rebuild plain containers, numbers, strings and numpy scalars/arrays only; nothing else is looked up."""

    _ALLOWED = {("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "object")} | {
        ("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("copy_reg", "_reconstructor"),
        ("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")} | {
        (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}

    def find_class(self, module: str, name: str):  # noqa: D102
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _refusal(path: Path, what: str) -> SldartsError:
    return SldartsError(f"benchmark file {path} holds the Python object {what}, and loading it would run code: "
                        "pass trust=true (lookup: --trust) only for a file from a source you trust, or leave "
                        "benchmark= empty for the shipped table")


class _Shared(dict):
    """The loaded benchmark, handed to ``nats_bench.create`` without the deep copy it makes of a dict (the
    full file holds every cell's records: copying them would double the memory and the start-up time)."""

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _records(infos: Any, path: Path) -> dict:
    """A cell's ``{hp: state dict}``, checked to be dicts: the benchmark APIs treat a string there as a
    file name and unpickle that file without restriction."""
    if not isinstance(infos, dict) or not all(isinstance(r, dict) for r in infos.values()):
        raise SldartsError(f"benchmark file {path} does not hold a cell's results as dicts (hp -> results)")
    return infos


def _checked(data: Any, path: Path) -> dict:
    """A whole benchmark dict (meta_archs, arch2infos, evaluated_indexes) with every record checked."""
    if not isinstance(data, dict) or not isinstance(data.get("arch2infos"), dict):
        raise SldartsError(f"benchmark file {path} does not hold a NAS-Bench-201 / NATS-Bench dict")
    for infos in data["arch2infos"].values():
        _records(infos, path)
    return data


def _load_pickle(path: Path, trust: bool) -> Any:
    """A (bz2-compressed) pickle, through the allow-list unless ``trust``."""
    try:
        with (bz2.BZ2File(path, "rb") if path.suffix == ".pbz2" else open(path, "rb")) as f:
            return pickle.load(f) if trust else _BenchUnpickler(f).load()
    except _Refused as exc:
        raise _refusal(path, str(exc)) from None
    except Exception as exc:  # truncated, garbage or foreign files raise many types
        raise SldartsError(f"cannot read benchmark file {path}: {type(exc).__name__}: {exc}") from None


@lru_cache(maxsize=1)
def shipped() -> CsvBenchmark:
    """The NAS-Bench-201 table in the package (read once per process)."""
    return CsvBenchmark(resources.files("sldarts").joinpath(SHIPPED))


def open_benchmark(path: str | Path | None, trust: bool = False) -> Benchmark:
    """Open the benchmark at PATH (or $SLDARTS_NB201, or the shipped table), choosing the reader by what the
    path is. Pickled formats are read through an allow-list unless ``trust`` (see the module's docstring)."""
    if path is None or str(path) == "":
        path = os.environ.get(ENV)
    if not path:
        return shipped()
    p = Path(path)
    if not p.exists():
        raise SldartsError(f"benchmark {p} does not exist")
    name = p.name
    if name.endswith((".csv", ".csv.gz")):
        return CsvBenchmark(p)
    nats_dir = p.is_dir() and (p / "meta.pickle.pbz2").exists()
    if name.startswith("NATS-tss") or name.endswith(".pickle.pbz2") or nats_dir:
        try:
            from nats_bench import create
        except ImportError:
            raise SldartsError("reading NATS-Bench files needs the nats_bench package: "
                               "pip install -e '.[nats]' in the sldarts clone") from None
        if p.is_dir():
            meta = _load_pickle(p / "meta.pickle.pbz2", trust)
            data = {"meta_archs": meta.get("meta_archs") if isinstance(meta, dict) else None,
                    "arch2infos": {}, "evaluated_indexes": []}
        else:
            data = _checked(_load_pickle(p, trust), p)
        try:
            api = create(_Shared(data), "tss", fast_mode=False, verbose=False)
        except Exception as exc:
            raise SldartsError(f"cannot read NATS-Bench benchmark {p}: {type(exc).__name__}: {exc}") from None
        return ApiBenchmark(p, api, p if p.is_dir() else None, trust)
    if p.suffix == ".pth":
        try:
            from nas_201_api import NASBench201API
        except ImportError:
            raise SldartsError("reading NAS-Bench-201 .pth files needs the nas_201_api package: "
                               "pip install nas-bench-201") from None
        import torch

        try:
            data = torch.load(p, map_location="cpu", weights_only=not trust)
        except pickle.UnpicklingError as exc:
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            raise _refusal(p, found.group(1) if found else "outside torch's weights-only allow-list") from None
        except Exception as exc:
            raise SldartsError(f"cannot read NAS-Bench-201 benchmark {p}: {type(exc).__name__}: {exc}") from None
        data = _checked(data, p)
        try:
            api = NASBench201API(data, verbose=False)
        except Exception as exc:
            raise SldartsError(f"cannot read NAS-Bench-201 benchmark {p}: {type(exc).__name__}: {exc}") from None
        return ApiBenchmark(p, api)
    raise SldartsError(f"benchmark {p}: unknown format; expected a .csv table, NATS-tss files or a .pth file")


def export_csv(bench: Benchmark, out: str | Path) -> int:
    """Write the full table (EXPORT_COLUMNS, official index order) of an official benchmark; returns the rows."""
    if not isinstance(bench, ApiBenchmark):
        raise SldartsError("--export-csv needs the official files (--benchmark NATS_DIR, a NATS-tss "
                           ".pickle.pbz2 or a NAS-Bench-201 .pth), not a table")
    out = Path(out)
    tmp = out.with_name(out.name + ".part")
    n = 0
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(EXPORT_COLUMNS)
        for arch in bench.archs():
            r = bench.query(arch)
            vals = {_column(d, s): r[d][s] for d in BENCHMARK_SETS for s in SPLITS}
            vals.update(bench.extra(r["index"]))
            w.writerow([r["index"], arch] + ["" if vals.get(c) is None else round(vals[c], 6)
                                             for c in EXPORT_COLUMNS[2:]])
            n += 1
    os.replace(tmp, out)
    return n


def table3(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The paper's Table 3 layout: CIFAR-10, CIFAR-100, ImageNet16-120, each valid and test."""
    lines = ["| Method | CIFAR-10 valid | CIFAR-10 test | CIFAR-100 valid | CIFAR-100 test | "
             "ImageNet16-120 valid | ImageNet16-120 test |", "| --- |" + " --- |" * 6]
    for name, r in rows:
        cells = [r[d][s] for d in BENCHMARK_SETS for s in SPLITS]
        lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in cells) + " |")
    return "\n".join(lines)
