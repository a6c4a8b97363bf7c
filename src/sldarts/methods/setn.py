"""SETN (Dong & Yang, "One-shot neural architecture search via self-evaluated template network", NeurIPS
2019). The weight step trains one uniformly drawn architecture (as RSPS: ``model.sample_weights()``); the α
step (bi-level, on α batches) trains α on the softmax-weighted supernet. At the end ``setn_samples``
templates are scored with the shared weights and the best is derived. ``setn_select=sample``: drawn from
α's distribution (per edge, an op from the activated α), each scored on the same first ``setn_batches``
validation batches. ``setn_select=top``: the ``setn_samples`` most probable templates under α (a best-first
enumeration over the rows, exact), each scored on ``setn_batches`` validation batches of its own, as
AutoDL-Projects' SETN does (its ``return_topK`` and ``get_best_arch``); spaces whose every choice is one op.

In the DARTS space a template also needs two inputs per node: each edge draws its op from α restricted to
the ops that are not ``none``, and each node keeps two distinct incoming edges drawn without replacement in
proportion to their mass outside ``none`` (DARTS's derivation ranks edges the same way, by their strongest
op). Under ``optim=single`` α's gradient comes from the softmax supernet and w's from a uniform sample of the
same batch (two forward passes, as SDARTS under single-level)."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sldarts.methods import Part, config_options, refuse, register
from sldarts.methods.rsps import best_of
from sldarts.spaces.base import Supernet

SetnOptions = config_options("SetnOptions", "setn_samples", "setn_batches", "setn_select")


def keeps_inputs(model: Supernet) -> bool:
    """Whether the space's architectures keep some edges of a node and drop the others (DARTS: two inputs per
    node), which a uniform draw shows as rows without any op; the run's random stream is not touched."""
    with torch.random.fork_rng(devices=[]):
        return any(bool((w.reshape(-1, w.shape[-1]).sum(1) == 0).any()) for w in model.sample_weights().values())


def one_op_per_row(model: Supernet) -> bool:
    """Whether every α row of the space's architectures holds exactly one op (NB201; not DARTS's nodes nor an
    InputChoice keeping several inputs); the run's random stream is not touched."""
    with torch.random.fork_rng(devices=[]):
        return all(bool((w.reshape(-1, w.shape[-1]).sum(1) == 1).all()) for w in model.sample_weights().values())


def sample_from(model: Supernet, probs: dict[str, Tensor], two_inputs: bool = False) -> dict[str, Tensor]:
    """One architecture drawn from per-row op probabilities ``probs`` (keys of ``model.arch``), as one-hot
    weights; ``two_inputs``: two edges per node of ``model.node_groups()`` (see the module docstring)."""
    groups = model.node_groups() if two_inputs else None
    names = tuple(getattr(model, "op_names", ()) or ())
    out = {}
    for k, p in probs.items():
        p = p.detach().float().reshape(-1, p.shape[-1]).clamp_min(0)
        w = torch.zeros_like(p)
        if groups is None:
            idx = torch.multinomial(p + 1e-12, 1).flatten()
            w[torch.arange(len(p)), idx] = 1.0
        else:
            if "none" in names:
                p[:, names.index("none")] = 0.0
            for a, b in groups:
                mass = p[a:b].sum(1) + 1e-12
                for j in torch.multinomial(mass, min(2, b - a)).tolist():
                    w[a + j, int(torch.multinomial(p[a + j] + 1e-12, 1))] = 1.0
        out[k] = w.reshape(probs[k].shape)
    return out


@register
class Setn(Part):
    name = "setn"
    title = "self-evaluated templates (SETN)"
    Options = SetnOptions
    on = "setn_samples"
    order = 6
    two_inputs = False

    def adapt(self, model: Supernet) -> None:
        if type(model).sample_weights is Supernet.sample_weights:
            raise refuse(self.title, f"the {type(model).__name__} supernet cannot draw an architecture uniformly "
                         "(no sample_weights()); use another method")
        self.two_inputs = keeps_inputs(model)
        if self.opts.setn_select == "top" and not one_op_per_row(model):
            raise refuse(self.title, f"setn_select=top enumerates templates of one op per choice, and the "
                         f"{type(model).__name__}'s also choose inputs (DARTS's nodes, an InputChoice keeping "
                         "several); use setn_select=sample")

    def weight_step_weights(self, model: Supernet) -> dict[str, Tensor] | None:
        return model.sample_weights()

    def draw(self, model: Supernet) -> dict[str, Tensor]:
        """A template from α's distribution (the activated α per edge)."""
        with torch.no_grad():
            return sample_from(model, {k: model.activation(a) for k, a in model.arch.items()}, self.two_inputs)

    def select(self, model: Supernet, valid_batches: Callable[[int], list[tuple[Tensor, Tensor]]], seed: int
               ) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """(the best-scored template's one-hot weights, what to record) instead of derivation from α."""
        n, b = self.opts.setn_samples, self.opts.setn_batches
        if self.opts.setn_select == "sample":
            return best_of(self.name, model, valid_batches(b), n, seed, lambda: self.draw(model))
        with torch.no_grad():  # (fewer where the space holds fewer architectures)
            top = top_templates({k: model.activation(a) for k, a in model.arch.items()}, n)
        templates = iter(top)
        weights, rec = best_of(self.name, model, valid_batches(len(top) * b), len(top), seed,
                               lambda: next(templates), b)
        return weights, {self.name: {**rec[self.name], "select": "top"}}


def top_templates(probs: dict[str, Tensor], k: int) -> list[dict[str, Tensor]]:
    """The ``k`` most probable architectures under independent per-row op probabilities ``probs`` (one op a
    row), most probable first, as one-hot weights: a best-first walk from every row's best op, each step moving
    one row to its next-best op (exact: a template's successors are never more probable than it)."""
    shapes = {key: (p.shape, p.device) for key, p in probs.items()}
    vals: list[list[float]] = []  # per row (every key's, in turn): log-probabilities, best first
    order: list[list[int]] = []  # and the ops they belong to
    for p in probs.values():
        v, o = p.detach().double().reshape(-1, p.shape[-1]).clamp_min(0).log().sort(dim=1, descending=True, stable=True)
        vals, order = vals + v.tolist(), order + o.tolist()

    def score(idx: tuple[int, ...]) -> float:
        return sum(vals[r][i] for r, i in enumerate(idx))

    start = (0,) * len(vals)
    heap, seen, found = [(-score(start), start)], {start}, []
    while heap and len(found) < k:
        _, idx = heapq.heappop(heap)
        found.append(idx)
        for r in range(len(idx)):
            if idx[r] + 1 < len(vals[r]):
                nxt = idx[:r] + (idx[r] + 1,) + idx[r + 1:]
                if nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(heap, (-score(nxt), nxt))
    out = []
    for idx in found:
        w, row = {}, 0
        for key, (shape, device) in shapes.items():
            rows = shape[:-1].numel()
            t = torch.zeros(rows, shape[-1], device=device)
            for j in range(rows):
                t[j, order[row + j][idx[row + j]]] = 1.0
            w[key], row = t.reshape(shape), row + rows
        out.append(w)
    return out
