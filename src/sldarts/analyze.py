"""``sldarts analyze``: the paper's Figures 1-3 and a Markdown report from run directories.

Reads ``metrics.jsonl`` and, when the search ran with ``analysis=true``, ``analysis.jsonl``; works on
finished, running and resumed runs alike (it reads whatever complete lines exist).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from sldarts.decided import margins
from sldarts.errors import SldartsError
from sldarts.rundir import read_metrics
from sldarts.spaces import ARCH_SPACE, get_space
from sldarts.spaces.ops import PARAM_FREE


def load_run(run_dir: str | Path) -> dict[str, Any]:
    d = Path(run_dir)
    if not (d / "metrics.jsonl").exists():
        raise SldartsError(f"{d} is not a search run directory (no metrics.jsonl)")
    cfg = yaml.safe_load((d / "config.yaml").read_text()) if (d / "config.yaml").exists() else {}
    opt = cfg.get("optim", "?")
    order = "" if opt == "single" else f" (order {cfg.get('order', 1)})"
    label = f"{d.name}: {opt}{order} {cfg.get('activation', '')}"
    return {"dir": d, "name": d.name, "config": cfg, "label": label, "metrics": read_metrics(d / "metrics.jsonl"),
            "analysis": read_metrics(d / "analysis.jsonl")}


def _plt():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SldartsError("figures need matplotlib: pip install matplotlib (or pip install -e '.[plot]' in the "
                           "sldarts clone)") from None
    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.pdf"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=130)
    return paths


def _x(rows: list[dict[str, Any]]) -> tuple[list[float], str]:
    """Training progress in epochs (comparable across bi-level and single-level runs), else steps."""
    if rows and rows[0].get("t") is not None:
        return [r["t"] for r in rows], "epoch"
    return [r["global_step"] for r in rows], "step"


def _trajectories(run: dict[str, Any]) -> tuple[list[float], list[dict[str, Any]], str]:
    """(x values, weight dicts, x label): every analysis row if present, else one per epoch."""
    if run["analysis"]:
        xs, label = _x(run["analysis"])
        return xs, [r["weights"] for r in run["analysis"]], label
    return [r["epoch"] for r in run["metrics"]], [r["weights"] for r in run["metrics"]], "epoch"


def _as_rows(value: list) -> list[list[float]]:
    """An α entry as rows of op weights: (edges, ops) for cells, a single row for a user model's choice."""
    return value if isinstance(value[0], list) else [value]


def _labels(run: dict[str, Any], key: str, rows: int, ops: int) -> tuple[list[str], list[str]]:
    """(row labels, op names) of the α entry ``key``, from the run's space (generic ones if it cannot be
    loaded here, e.g. a Python model object)."""
    try:
        edges, names = get_space(run["config"].get("space", ARCH_SPACE)).labels(key, rows)
    except SldartsError:
        edges, names = [str(i) for i in range(rows)], None
    return edges, names or [f"op{k}" for k in range(ops)]


def fig_weights(run: dict[str, Any], out: Path) -> list[Path]:
    """Figure 1: p_i per edge over training; parameter-free ops dashed, learnable ops solid."""
    plt = _plt()
    xs, ws, xlabel = _trajectories(run)
    key = next(iter(ws[0]))  # the first α entry (NB201's cell, DARTS's normal cell)
    first = _as_rows(ws[0][key])
    n_edges = len(first)
    cols = 3 if n_edges <= 6 else 5
    rows = -(-n_edges // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False, sharex=True)
    labels, ops = _labels(run, key, n_edges, len(first[0]))
    for e in range(rows * cols):
        ax = axes[e // cols][e % cols]
        if e >= n_edges:
            ax.axis("off")
            continue
        for k, op in enumerate(ops):
            ax.plot(xs, [_as_rows(w[key])[e][k] for w in ws], ls="--" if op in PARAM_FREE else "-", label=op)
        ax.set_title(f"edge {labels[e]}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"activated weights p_i ({key} cell) — {run['label']}", fontsize=10)
    paths = _save(fig, out, f"weights_{run['name']}")
    plt.close(fig)
    return paths


def fig_correlation(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Figure 2: the coupling term per node of the first/middle/last cells; bi-level solid, single dashed."""
    runs = [r for r in runs if r["analysis"]]
    if not runs:
        return []
    plt = _plt()
    cells = sorted({c for r in runs for c in r["analysis"][0]["corr"]}, key=lambda c: int(c[4:]))
    fig, axes = plt.subplots(1, len(cells), figsize=(5 * len(cells), 3.6), squeeze=False)
    for i, cell in enumerate(cells):
        ax = axes[0][i]
        for r in runs:
            if cell not in r["analysis"][0]["corr"]:
                continue
            ls = "--" if r["config"].get("optim") == "single" else "-"
            xs, xlabel = _x(r["analysis"])
            for node in r["analysis"][0]["corr"][cell]["nodes"]:
                ax.plot(xs, [a["corr"][cell]["nodes"][node][0] for a in r["analysis"]], ls=ls,
                        label=f"{r['name']} node {node}")
        ax.set_title(f"gradient correlation (eq. 13), {cell}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_yscale("symlog", linthresh=1e-6)
    axes[0][0].legend(fontsize=6)
    paths = _save(fig, out, "correlation")
    plt.close(fig)
    return paths


def margin_history(run: dict[str, Any]) -> tuple[list[int], dict[str, list[float]]]:
    """(epochs, decision name -> margin per epoch): the recorded margins, or (runs made before they were
    recorded) margins derived again from the recorded weights by the run's rule."""
    cfg = run["config"]
    rows = [r for r in run["metrics"] if "weights" in r or "margins" in r]
    series: dict[str, list[float]] = {}
    epochs = []
    for r in rows:
        m = r.get("margins")
        if m is None:
            try:
                _, decisions = get_space(cfg.get("space", ARCH_SPACE)).rederive(
                    {k: torch.tensor(v) for k, v in r["weights"].items()}, cfg.get("derive", "argmax"))
            except SldartsError:
                return [], {}
            m = margins(decisions)["margins"]
        epochs.append(r["epoch"])
        for name, v in m.items():
            series.setdefault(name, []).append(v)
    return epochs, series


def fig_margins(run: dict[str, Any], out: Path) -> list[Path]:
    """Each decision's margin (winner's weight minus runner-up's) over the epochs, on a log scale, with the
    run's "undecided" threshold: how decided the derived cell was, and since when."""
    epochs, series = margin_history(run)
    if not series:
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, vals in series.items():
        ax.plot(epochs, [max(v, 1e-6) for v in vals], label=name, lw=1.2)
    ax.axhline(run["config"].get("margin_threshold", 0.01), color="k", ls=":", lw=1, label="threshold")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("margin (floored at 1e-6)")
    ax.legend(fontsize=6, ncol=2 if len(series) > 8 else 1)
    ax.set_title(f"decision margins — {run['label']}", fontsize=10)
    paths = _save(fig, out, f"margins_{run['name']}")
    plt.close(fig)
    return paths


def fig_dldp(run: dict[str, Any], out: Path) -> list[Path]:
    """Figure 3: dL/dp_i on the edges entering the last node of the last cell, per op."""
    if not run["analysis"]:
        return []
    plt = _plt()
    dl = run["analysis"][0]["dldp"]
    last = max(dl, key=lambda c: int(c[4:]))
    edges = list(dl[last])
    last_node = max(int(e.split("<-")[0]) for e in edges)
    edges = [e for e in edges if int(e.split("<-")[0]) == last_node]
    fig, axes = plt.subplots(1, len(edges), figsize=(4.5 * len(edges), 3.4), squeeze=False)
    xs, xlabel = _x(run["analysis"])
    for i, e in enumerate(edges):
        ax = axes[0][i]
        for op in dl[last][e]:
            ax.plot(xs, [a["dldp"][last][e][op] for a in run["analysis"]], ls="--" if op in PARAM_FREE else "-",
                    label=op)
        ax.set_title(f"dL/dp, {last}, edge {e}", fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(run["label"], fontsize=10)
    paths = _save(fig, out, f"dldp_{run['name']}")
    plt.close(fig)
    return paths


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summarize(run: dict[str, Any]) -> dict[str, Any]:
    """The numbers behind the figures: mean node correlation per cell, dL/dp per op early and late."""
    last = run["metrics"][-1]
    out: dict[str, Any] = {"run": run["name"], "optim": run["config"].get("optim"),
                           "order": run["config"].get("order"), "activation": run["config"].get("activation"),
                           "lr": run["config"].get("lr"), "epochs_done": last["epoch"],
                           "arch": last.get(last.get("arch_key", ""), last.get("arch", last.get("genotype"))),
                           "param_free_ratio": last["param_free_ratio"], "valid_acc": last.get("valid_acc")}
    rows = run["analysis"]
    if rows:
        corr = {}
        for cell in rows[0]["corr"]:
            inner = [_mean([v[0] for v in r["corr"][cell]["nodes"].values()]) for r in rows]
            cos = [_mean([v[1] for v in r["corr"][cell]["nodes"].values()]) for r in rows]
            corr[cell] = {"inner": _mean(inner), "cos": _mean(cos)}
        out["correlation"] = corr
        k = max(len(rows) // 10, 1)
        dl = rows[0]["dldp"]
        lastc = max(dl, key=lambda c: int(c[4:]))
        ops = list(next(iter(dl[lastc].values())))
        node = max(int(e.split("<-")[0]) for e in dl[lastc])
        edges = [e for e in dl[lastc] if int(e.split("<-")[0]) == node]

        def avg(part):
            return {op: _mean([r["dldp"][lastc][e][op] for r in part for e in edges]) for op in ops}

        out["dldp_last_node"] = {"cell": lastc, "first_10pct": avg(rows[:k]), "last_10pct": avg(rows[-k:])}
    return out


def markdown(summaries: list[dict[str, Any]]) -> str:
    lines = ["# Search analysis", "", "| run | optim | activation | lr | epochs | param-free ratio | supernet acc | "
             "mean node correlation (inner, cos) per cell |", "|" + " --- |" * 8]
    for s in summaries:
        corr = "; ".join(f"{c}: {v['inner']:.3g}, {v['cos']:.3f}" for c, v in s.get("correlation", {}).items()) or "-"
        opt = s["optim"] if s["optim"] == "single" else f"bilevel{s['order']}"
        acc = "-" if s["valid_acc"] is None else f"{100 * s['valid_acc']:.2f}"
        lines.append(f"| {s['run']} | {opt} | {s['activation']} | {s['lr']} | {s['epochs_done']} | "
                     f"{s['param_free_ratio']:.3f} | {acc} | {corr} |")
    for s in summaries:
        lines += ["", f"## {s['run']}", "", f"Final architecture: `{json.dumps(s['arch'])}`"]
        if "dldp_last_node" in s:
            d = s["dldp_last_node"]
            lines += ["", f"Mean dL/dp_i on the edges into the last node of {d['cell']} "
                          "(negative: gradient descent raises p_i):", "", "| op | first 10% of steps | last 10% |",
                      "| --- | --- | --- |"]
            for op in d["first_10pct"]:
                lines.append(f"| {op}{' (param-free)' if op in PARAM_FREE else ''} | {d['first_10pct'][op]:.4g} | "
                             f"{d['last_10pct'][op]:.4g} |")
    return "\n".join(lines) + "\n"


def analyze(run_dirs: list[str | Path], out: str | Path) -> list[Path]:
    """Write figures (PNG + PDF) and report.md for the runs into ``out``; returns the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d) for d in run_dirs]
    paths: list[Path] = []
    for r in runs:
        if not r["metrics"]:
            raise SldartsError(f"{r['dir']} has no complete metrics line yet")
        paths += fig_weights(r, out)
        paths += fig_dldp(r, out)
        paths += fig_margins(r, out)
    paths += fig_correlation(runs, out)
    summaries = [summarize(r) for r in runs]
    (out / "report.md").write_text(markdown(summaries))
    (out / "summary.json").write_text(json.dumps(summaries, indent=1))
    return paths + [out / "report.md", out / "summary.json"]
