"""Cell diagrams as the DARTS papers draw them: Graphviz DOT always; PNG/PDF by Graphviz's `dot` where it
exists, otherwise by a plain matplotlib drawing, so a bare machine still gets a picture."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from sldarts.errors import SldartsError
from sldarts.spaces import CellGraph, SearchSpace, get_space


def to_dot(g: CellGraph) -> str:
    colours = {"input": "darkseagreen2", "node": "lightblue", "output": "palegoldenrod"}
    lines = [f'digraph "{g.name}" {{', "  rankdir=LR;",
             '  node [style="rounded,filled", shape=rect, fontname=helvetica, penwidth=2];',
             "  edge [fontname=times, fontsize=16];"]
    for nid, label, kind in g.nodes:
        lines.append(f'  "{nid}" [label="{label}", fillcolor={colours[kind]}];')
    for src, dst, op in g.edges:
        attr = f' [label="{op}", fillcolor=gray]' if op else ' [fillcolor=gray]'
        lines.append(f'  "{src}" -> "{dst}"{attr};')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _positions(g: CellGraph) -> dict[str, tuple[float, float]]:
    inputs = [n for n, _, k in g.nodes if k == "input"]
    inner = [n for n, _, k in g.nodes if k == "node"]
    outputs = [n for n, _, k in g.nodes if k == "output"]
    pos: dict[str, tuple[float, float]] = {}
    for i, n in enumerate(inputs):
        pos[n] = (0.0, (len(inputs) - 1) / 2 - i)
    for i, n in enumerate(inner):
        pos[n] = (1.0 + i, 0.9 if i % 2 == 0 else -0.9)
    for n in outputs:
        pos[n] = (len(inner) + 1.0, 0.0)
    return pos


def draw_matplotlib(g: CellGraph, paths: list[Path]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import FancyArrowPatch
    except ImportError:
        raise SldartsError("no Graphviz `dot` and no matplotlib: install graphviz or `pip install matplotlib` "
                           "to render the diagram (the .dot file was written)") from None
    pos = _positions(g)
    colours = {"input": "#b4eeb4", "node": "#add8e6", "output": "#eee8aa"}
    width = max(x for x, _ in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(2.2 * width, 4))
    for k, (src, dst, op) in enumerate(g.edges):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        rad = 0.25 if (k % 2) else -0.25
        ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                     mutation_scale=14, color="0.35", shrinkA=22, shrinkB=22, lw=1.3))
        if op:
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            dx, dy = x1 - x0, y1 - y0
            # the label sits at the arc3 curve's midpoint
            ax.text(mx + rad * dy * 0.5, my - rad * dx * 0.5, op, fontsize=8, ha="center", va="center",
                    bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85))
    for nid, label, kind in g.nodes:
        x, y = pos[nid]
        ax.text(x, y, label.replace("_{", "_").replace("}", ""), ha="center", va="center", fontsize=11,
                bbox=dict(boxstyle="round,pad=0.4", fc=colours[kind], ec="black", lw=1.5))
    ax.set_xlim(-0.6, width - 0.4)
    ax.set_ylim(-1.8, 1.8)
    ax.axis("off")
    ax.set_title(g.name)
    for p in paths:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)


def make_parent(path: Path) -> None:
    """Create ``path``'s folder, or say in one line why it cannot be (a file in the way, no permission)."""
    for p in [path.parent, *path.parent.parents]:
        if p.exists() and not p.is_dir():
            raise SldartsError(f"cannot write {path}: {p} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SldartsError(f"cannot create the folder {path.parent}: {exc.strerror}") from None


def plot_cells(space: SearchSpace | str, arch: Any, prefix: str | Path, formats: tuple[str, ...] = ("png", "pdf"),
               use_graphviz: bool | None = None) -> list[Path]:
    """Write PREFIX_<cell>.dot and the rendered files for each cell type; returns the paths written."""
    space = get_space(space) if isinstance(space, str) else space
    prefix = Path(prefix)
    make_parent(prefix)
    graphs = space.graphs(arch)
    dot_bin = shutil.which("dot") if use_graphviz is not False else None
    written: list[Path] = []
    for g in graphs:
        base = prefix.parent / f"{prefix.name}_{g.name}"
        dot_path = base.with_suffix(".dot")
        dot_path.write_text(to_dot(g))
        written.append(dot_path)
        outs = [base.with_suffix(f".{fmt}") for fmt in formats]
        if dot_bin:
            for fmt, out in zip(formats, outs, strict=True):
                subprocess.run([dot_bin, f"-T{fmt}", str(dot_path), "-o", str(out)], check=True,
                               capture_output=True)
        else:
            draw_matplotlib(g, outs)
        written.extend(outs)
    return written
