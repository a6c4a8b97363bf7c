"""Sweep reports: mean ± std over seeds for each setting, laid out like the paper's tables.

The std is the population standard deviation (ddof=0, as ``numpy.std``), the convention of the NAS
papers' "± std over 3 runs"; a setting run once shows ± 0.00. With NB201 look-ups recorded, the columns
are the benchmark accuracies; otherwise the final supernet accuracy and the parameter-free ratio. Each
row also says how many distinct cells its seeds derived and how many found the most common one (the
paper's "94.36 ± 0.00" is one cell on every seed); the modal cells are listed under the table.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from sldarts.errors import SldartsError
from sldarts.lookup import BENCHMARK_SETS, SPLITS
from sldarts.rundir import OPERATIONAL, claim, owned, read_result

IGNORED = OPERATIONAL | {"seed"}  # keys that do not make a setting: how a run executes, and the seed
NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet16-120": "ImageNet16-120"}

# The paper's Table 3 (NAS-Bench-201, mean ± std over its runs), by method preset: CIFAR-10 valid, test,
# CIFAR-100 valid, test, ImageNet16-120 valid, test. DARTS's row is the same for first and second order.
PAPER_TABLE3: dict[str, tuple[str, ...]] = {
    "rsps": ("84.16 ± 1.69", "87.66 ± 1.69", "59.00 ± 4.60", "58.33 ± 4.34", "31.56 ± 3.28", "31.14 ± 3.88"),
    "darts": ("39.77 ± 0.00", "54.30 ± 0.00", "15.03 ± 0.00", "15.61 ± 0.00", "16.43 ± 0.00", "16.32 ± 0.00"),
    "gdas": ("90.00 ± 0.21", "93.51 ± 0.13", "71.14 ± 0.27", "70.61 ± 0.26", "41.70 ± 1.26", "41.84 ± 0.90"),
    "darts-minus": ("91.03 ± 0.44", "93.80 ± 0.40", "71.36 ± 1.51", "71.53 ± 1.51", "44.87 ± 1.46", "45.12 ± 0.82"),
    "single-darts": ("91.55 ± 0.00", "94.36 ± 0.00", "73.49 ± 0.00", "73.51 ± 0.00", "44.87 ± 0.00",
                     "46.34 ± 0.00"),
    "setn": ("82.25 ± 5.17", "86.19 ± 4.63", "56.86 ± 7.59", "56.87 ± 7.77", "32.54 ± 3.63", "31.90 ± 4.07"),
    "enas": ("39.77 ± 0.00", "54.30 ± 0.00", "15.03 ± 0.00", "15.61 ± 0.00", "16.43 ± 0.00", "16.32 ± 0.00"),
}
PAPER_COLUMNS = [f"{NAMES[d]} {s}" for d in BENCHMARK_SETS for s in SPLITS]

# The paper's Table 4 (DARTS space, ImageNet; each system's published architecture retrained, mostly after a
# CIFAR-10 search, the single-level rows searched on ImageNet): FLOPs (M), params (M), top-1 (%). Printed beside
# a DARTS-space sweep's derived cells, whose size is counted on the same ImageNet network (complexity).
PAPER_TABLE4: dict[str, tuple[str, str, str]] = {
    "darts": ("574", "4.7", "73.3"),
    "pcdarts": ("597", "5.3", "75.8"),
    "pdarts": ("557", "4.9", "75.6"),
    "dartsplus": ("591", "5.1", "76.3"),
    "dropnas": ("597", "5.4", "76.6"),
    "single-darts": ("714", "6.60", "77.0"),  # single-level + sigmoid, best of its 3 searches
}
PAPER_TABLE4_COLUMNS = ["ImageNet FLOPs (M)", "ImageNet params (M)", "ImageNet top-1"]

# Search settings of each method's own code where a run may differ (docs/methods.md, "differs from the
# original"): a row whose runs set other values is marked, since the published numbers stand beside it.
ORIGINAL: dict[str, dict[str, Any]] = {
    "gdas": {"epochs": 250},  # AutoDL-Projects' NB201 GDAS config
    "drnas": {"epochs": 100},  # DrNAS 201-space/train_search.py
    "pcdarts": {"batch_size": 256, "lr": 0.1, "arch_lr": 6e-4, "arch_warmup": 15},  # PC-DARTS train_search.py
    "betadarts": {"epochs": 100},  # its λ = 50·epoch/100 equals beta_weight·epoch/epochs only at 100 epochs
    "pdarts": {"epochs": 25, "batch_size": 96, "arch_lr": 6e-4, "lr_min": 0.0},  # P-DARTS train_search.py, a stage
    "dropnas": {"epochs": 76, "batch_size": 96, "lr": 0.0375, "grad_clip": 3.0},  # DropNAS config.py (search)
    "setn": {"epochs": 250, "setn_select": "top"},  # AutoDL-Projects' NB201 SETN.config and get_best_arch
    "enas": {"epochs": 310, "lr": 0.05, "weight_decay": 0.00025, "batch_size": 128},  # its NB201 ENAS.config
}


def differs(method: Any, configs: list[dict[str, Any]]) -> list[str]:
    """``key=original`` for each recipe setting of ``method``'s own code that one of ``configs`` changes."""
    original = ORIGINAL.get(str(method), {})
    return [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in original.items()
            if any(c.get(k) != v for c in configs)]


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def collect(sweep_dir: Path) -> list[dict[str, Any]]:
    """Finished points of a sweep: their config and result."""
    runs = []
    single = (Path(sweep_dir) / "result.json").exists()  # one finished run: a sweep of one point
    for d in [Path(sweep_dir)] if single else sorted(p for p in Path(sweep_dir).iterdir() if p.is_dir()):
        if (d / "result.json").exists():
            res = read_result(d)
            runs.append({"dir": d.name, "config": res.get("config") or yaml.safe_load((d / "config.yaml").read_text()),
                         "result": res})
    return runs


def metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numbers a point contributes to its row."""
    bench = result.get("benchmark")
    if bench:
        return {f"{NAMES[d]} {s}": bench[d][s] for d in BENCHMARK_SETS for s in SPLITS if bench[d][s] is not None}
    out = {"param-free ratio": result["param_free_ratio"]}
    if result.get("valid_acc") is not None:
        out = {"supernet acc": 100.0 * result["valid_acc"], **out}
    size = transfer_size(result)
    if size is not None:  # e.g. Table 4's columns: a DARTS cell on its ImageNet network (C=48, 14 cells)
        name = NAMES.get(size["dataset"], "ImageNet" if size["dataset"] == "imagenet" else size["dataset"])
        out.update({f"{name} FLOPs (M)": size["macs_m"], f"{name} params (M)": size["params_m"]})
    return out


def transfer_size(result: dict[str, Any]) -> dict[str, Any] | None:
    """Params and MACs of a result's cell on the data set its space's papers transfer cells to (the space's
    ``transfer_dataset``; DARTS: ImageNet, as the paper's Table 4 counts them): recorded when the search ran
    there, else counted now (a few seconds a cell). None for a space without one."""
    from sldarts.evaluate.complexity import complexity
    from sldarts.spaces import SPACES, get_space

    if str(result.get("space")) not in SPACES:  # a report imports no module a sweep's config names
        return None
    space = get_space(str(result["space"]))
    target, key = space.transfer_dataset, result.get("arch_key") or space.arch_key
    if target is None or key not in result:
        return None
    size = result.get("complexity") or {}
    if size.get("dataset") == target and "macs_m" in size:
        return size
    counted = complexity(space, space.parse(result[key]), target)
    return {**counted, "dataset": target} if "macs_m" in counted else None


def aggregate(runs: list[dict[str, Any]]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """(setting keys, metric columns, rows) with one row per setting, seeds pooled."""
    if not runs:
        raise SldartsError("no finished runs to report")
    keys = sorted({k for r in runs for k in r["config"]} - IGNORED)
    varying = [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]
    if "method" in varying:  # keys a method preset sets, and that vary only with it, say nothing more
        def by_method(k: str) -> bool:
            seen: dict[str, set[str]] = {}
            for r in runs:
                seen.setdefault(str(r["config"].get("method")), set()).add(json.dumps(r["config"].get(k)))
            return all(len(v) == 1 for v in seen.values())

        varying = ["method"] + [k for k in varying if k != "method" and not by_method(k)]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault(tuple(json.dumps(r["config"].get(k)) for k in varying), []).append(r)
    columns: list[str] = []
    for r in runs:
        for c in metrics(r["result"]):
            if c not in columns:
                columns.append(c)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = {k: json.loads(v) for k, v in zip(varying, key, strict=True)}
        row["seeds"] = sorted(m["config"].get("seed") for m in members)
        row["differs"] = differs(row.get("method"), [m["config"] for m in members]) if "method" in row else []
        row["cells"] = cell_counts(members)
        for c in columns:
            vals = [metrics(m["result"]).get(c) for m in members]
            vals = [v for v in vals if v is not None]
            row[c] = mean_std(vals) if vals else None
        rows.append(row)
    return varying, columns, rows


def derived_cell(result: dict[str, Any]) -> str:
    """A result's derived architecture as one comparable string."""
    key = result.get("arch_key") or ("arch" if "arch" in result else "genotype")
    arch = result.get(key)
    return arch if isinstance(arch, str) else json.dumps(arch, sort_keys=True)


def cell_counts(members: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(cell, number of seeds that derived it), the most common first (ties: first seen)."""
    counts: dict[str, int] = {}
    for m in members:
        c = derived_cell(m["result"])
        counts[c] = counts.get(c, 0) + 1
    return sorted(counts.items(), key=lambda kv: -kv[1])


def _cell(v: Any, decimals: int) -> str:
    if v is None:
        return "-"
    m, s = v
    return f"{m:.{decimals}f} ± {s:.{decimals}f}"


def markdown(varying: list[str], columns: list[str], rows: list[dict[str, Any]]) -> str:
    paper = [c for c in columns if c in PAPER_COLUMNS] if "method" in varying else []
    darts = "method" in varying and "ImageNet FLOPs (M)" in columns  # a DARTS-space sweep: the paper's Table 4
    paper4 = PAPER_TABLE4_COLUMNS if darts else []
    head = (varying + columns + [f"paper {c}" for c in paper] + [f"paper {c}" for c in paper4]
            + ["n", "distinct cells", "modal cell"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    modal = []
    for r in rows:
        dec = lambda c: 3 if c == "param-free ratio" else 2  # noqa: E731
        n = len(r["seeds"])
        cell, found = r["cells"][0]
        if cell not in modal:
            modal.append(cell)
        published = PAPER_TABLE3.get(str(r.get("method")))
        mark = {"method": f"{r['method']} *"} if r.get("differs") else {}
        cells = ([mark.get(k, str(r[k])) for k in varying] + [_cell(r[c], dec(c)) for c in columns]
                 + [published[PAPER_COLUMNS.index(c)] if published else "-" for c in paper]
                 + list(PAPER_TABLE4.get(str(r.get("method")), ("-",) * 3) if darts else ())
                 + [str(n), str(len(r["cells"])), f"C{modal.index(cell) + 1} ({found}/{n} seeds)"])
        lines.append("| " + " | ".join(cells) + " |")
    marked = [f"{r['method']} ({', '.join(r['differs'])} in its own code)" for r in rows if r.get("differs")]
    if marked:
        lines += ["", "\\* differs from the method's original search recipe (docs/methods.md): " + "; ".join(marked)]
    lines += ["", "Modal cells:"] + [f"- C{i + 1}: `{c}`" for i, c in enumerate(modal)]
    return "\n".join(lines)


def to_csv(varying: list[str], columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(varying + [x for c in columns for x in (f"{c} mean", f"{c} std")]
               + ["n", "seeds", "distinct cells", "modal cell", "modal seeds"])
    for r in rows:
        vals = [x for c in columns for x in (r[c] if r[c] is not None else ("", ""))]
        w.writerow([r[k] for k in varying] + vals + [len(r["seeds"]), " ".join(map(str, r["seeds"])),
                                                     len(r["cells"]), r["cells"][0][0], r["cells"][0][1]])
    return buf.getvalue()


def report(sweep_dir: str | Path, benchmark: Any = None) -> str:
    """Write report.md and report.csv into the sweep directory and return the Markdown table; a sweep of
    searches under a budget adds accuracy vs cost (budget.md, budget.png; ``benchmark``: an opened NB201
    benchmark for looked-up accuracies and its Pareto front)."""
    from sldarts.budget import trade_off

    d = Path(sweep_dir)
    if not d.is_dir():
        raise SldartsError(f"sweep directory {d} does not exist")
    runs = collect(d)
    varying, columns, rows = aggregate(runs)
    md = markdown(varying, columns, rows)
    budget = trade_off(d, runs, benchmark)
    md = md + ("\n\n" + budget if budget else "")
    if owned(d) is not None:  # a run directory: the report is one of its files
        claim(d, ["report.md", "report.csv"])
    (d / "report.md").write_text(md + "\n")
    (d / "report.csv").write_text(to_csv(varying, columns, rows))
    return md
