"""Measuring the mechanism the paper describes, during a search (``analysis=true``).

Every ``analysis_every`` steps, before the step updates anything, the probe records on the very batches
that step uses:

- **gradient correlation** (eq. 13 / Figure 2): for each op's weights W_i on each edge of the chosen
  cells, the inner product and cosine of ∂L/∂W_i on the w-batch and on the α-batch — the coupling term
  of eq. 12. In single-level both batches are one, so it is ‖∂L/∂W_i‖² > 0; in bi-level it should be ~0.
  Also per node (all ops of all edges entering it).
- **dL/dp_i** (Figure 3): the gradient of the α-batch loss with respect to each op's activated weight p_i,
  per edge, for the chosen cells and the last one (the paper looks at the edges entering the last node).
- **activated weights** p_i of every edge (Figure 1).

BN statistics are restored after the probe, so recording does not change the search.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sldarts.spaces.base import Supernet

Batch = tuple[Tensor, Tensor]


def choose_cells(spec: str, n: int) -> list[int]:
    """``"first,middle,last"`` or indices like ``"0,7,14"`` -> sorted distinct cell indices."""
    named = {"first": 0, "middle": n // 2, "last": n - 1}
    out = set()
    for part in str(spec).split(","):
        part = part.strip()
        if part in named:
            out.add(named[part])
        elif part:
            out.add(int(part) % n)
    return sorted(out)


class Probe:
    """Records gradient correlation, dL/dp and activated weights of a supernet to ``analysis.jsonl``."""

    def __init__(self, model: Supernet, cells: str = "first,middle,last", path: Path | None = None) -> None:
        self.model = model
        self.cells = choose_cells(cells, len(model.search_cells()))
        self.dldp_cells = sorted(set(self.cells) | {len(model.search_cells()) - 1})
        self.path = path
        self.seconds = 0.0
        self.loss_fn = nn.CrossEntropyLoss()

    def _edge_name(self, e: int) -> str:
        to, frm = self.model.edge_nodes()[e]
        return f"{to}<-{frm}"

    def measure(self, w_batch: Batch, a_batch: Batch | None = None) -> dict[str, Any]:
        """The numbers for one step; ``a_batch`` None or identical means single-level."""
        model = self.model
        cells = model.search_cells()
        views = {c: model.op_params(cells[c][0]) for c in self.cells}
        params = list({id(p): p for v in views.values() for lst in v.values() for p, _ in lst}.values())
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        was = model.training
        model.train()
        try:
            act = model.arch_weights()
            cell_w = {c: act[cells[c][1]].detach().clone().requires_grad_() for c in self.dldp_cells}
            same = a_batch is None or a_batch is w_batch
            xa, ya = w_batch if same else a_batch
            loss_a = self.loss_fn(model(xa, cell_weights=cell_w), ya)
            g = torch.autograd.grad(loss_a, params + [cell_w[c] for c in self.dldp_cells])
            grad_a = dict(zip(map(id, params), g[:len(params)], strict=True))
            dldp = dict(zip(self.dldp_cells, g[len(params):], strict=True))
            if same:
                grad_w = grad_a
            else:
                xw, yw = w_batch
                gw = torch.autograd.grad(self.loss_fn(model(xw), yw), params)
                grad_w = dict(zip(map(id, params), gw, strict=True))
        finally:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
            model.train(was)
        return {"corr": self._correlations(views, grad_w, grad_a), "dldp": self._dldp(dldp),
                "weights": {k: v.detach().cpu().tolist() for k, v in model.arch_weights().items()}}

    def _correlations(self, views, grad_w, grad_a) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for c, ops in views.items():
            edges: dict[str, dict[str, list[float]]] = {}
            nodes: dict[int, list[Tensor]] = {}
            for (e, name), lst in ops.items():
                gw = torch.cat([grad_w[id(p)][sl].reshape(-1) for p, sl in lst])
                ga = torch.cat([grad_a[id(p)][sl].reshape(-1) for p, sl in lst])
                inner = float(gw @ ga)
                cos = inner / max(float(gw.norm() * ga.norm()), 1e-30)
                edges.setdefault(self._edge_name(e), {})[name] = [inner, cos]
                to = self.model.edge_nodes()[e][0]
                nodes.setdefault(to, [torch.zeros(0), torch.zeros(0)])
                nodes[to] = [torch.cat([nodes[to][0], gw.detach().cpu()]), torch.cat([nodes[to][1], ga.detach().cpu()])]
            node_out = {}
            for to, (gw, ga) in sorted(nodes.items()):
                inner = float(gw @ ga)
                node_out[str(to)] = [inner, inner / max(float(gw.norm() * ga.norm()), 1e-30)]
            out[f"cell{c}"] = {"edges": edges, "nodes": node_out}
        return out

    def _dldp(self, dldp: dict[int, Tensor]) -> dict[str, Any]:
        names = self.model.op_names
        return {f"cell{c}": {self._edge_name(e): dict(zip(names, row.tolist(), strict=True))
                             for e, row in enumerate(g.detach().cpu())} for c, g in dldp.items()}

    def record(self, epoch: int, step: int, global_step: int, w_batch: Batch, a_batch: Batch | None,
               steps_per_epoch: int = 0) -> dict:
        t0 = time.perf_counter()
        row = {"epoch": epoch, "step": step, "global_step": global_step,
               "t": global_step / steps_per_epoch if steps_per_epoch else None, **self.measure(w_batch, a_batch)}
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        self.seconds += time.perf_counter() - t0
        return row

    def truncate(self, global_step: int) -> None:
        """After a resume: drop rows the resumed run will record again."""
        if self.path is None or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["global_step"] < global_step:
                    keep.append(line)
            except (json.JSONDecodeError, KeyError):
                break
        self.path.write_text("".join(x + "\n" for x in keep))
