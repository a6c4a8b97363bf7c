"""Every method part on every kind of supernet: applied with an effect a test observes, or refused in one line
before the first step (the refused ones are listed in docs/methods.md). Tiny models, one forward each."""

import copy
import re

import pytest
import torch
import userspace

import sldarts
from sldarts.config import load_config
from sldarts.errors import SldartsError
from sldarts.methods import PARTS, Method, mixing_edges, part_class
from sldarts.methods.samplers import SoftmaxSampler, sampler_for
from sldarts.spaces.darts import DartsSupernet
from sldarts.spaces.model import ChoiceSupernet
from sldarts.spaces.nb201 import NB201Supernet

KINDS = ["nb201", "darts", "choice", "custom"]
OPTIONS = {"partial": {"partial_channels": 2}, "edge_norm": {"edge_norm": True}, "aux_skip": {"aux_skip": True},
           "zero_one": {"zero_one_weight": 10.0}, "beta_decay": {"beta_weight": 50.0},
           "smoothing": {"sdarts_epsilon": 0.3}, "rsps": {}, "gumbel": {}, "dirichlet": {},
           "arch_warmup": {"arch_warmup": 2}, "pdarts": {"pdarts": True, "pdarts_skip_drop": "0.5,0.5,0.5"},
           "early_stop": {"dartsplus_max_skips": 2, "dartsplus_patience": 1}, "grouped_drop": {"dropnas_rate": 0.5},
           "setn": {"setn_samples": 5}, "enas": {}}
REFUSED = {("partial", "choice"): "partial channels (PC-DARTS): the candidates of Choice",
           ("edge_norm", "choice"): "edge normalisation (PC-DARTS): the ChoiceSupernet supernet does not say",
           ("edge_norm", "custom"): "edge normalisation (PC-DARTS): the ChainSupernet supernet does not say",
           **{("pdarts", k): "progressive search (P-DARTS): P-DARTS defines the DARTS space only"
              for k in ("nb201", "choice", "custom")},
           ("early_stop", "choice"): "early stopping (DARTS+): the ChoiceSupernet supernet has no normal cell",
           ("early_stop", "custom"): "early stopping (DARTS+): the ChainSupernet supernet has no normal cell",
           ("enas", "darts"): "ENAS controller: the DartsSupernet's architectures are not one op per α row",
           ("enas", "choice"): "ENAS controller: the ChoiceSupernet's architectures are not one op per α row"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions: one thread is several times faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def supernet(kind: str):
    torch.manual_seed(0)
    if kind == "nb201":
        return NB201Supernet(4, 1, impl="reference"), torch.randn(2, 3, 8, 8)
    if kind == "darts":
        return DartsSupernet(4, 3, impl="reference"), torch.randn(2, 3, 8, 8)
    if kind == "choice":
        return ChoiceSupernet(userspace.build(10, 1)), torch.randn(2, 1, 8, 8)
    return userspace.ChainSupernet(2, 10, 1), torch.randn(2, 1, 8, 8)


def method_with(name: str) -> Method:
    cls = part_class(name)
    part = cls(cls.Options(**OPTIONS[name]))
    parts = [part] if cls.sampler else [SoftmaxSampler(), part]
    return Method("", name if name in ("rsps", "enas") else "bilevel", 1, parts)


def edge_inputs(model, x) -> dict:
    """The input each mixed edge saw in one forward pass."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, a: (seen.setdefault(m, a[0]), None)[1])
             for m in mixing_edges(model)]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def calls_per_edge(model, x) -> list[int]:
    counts = {}
    hooks = []
    for m in mixing_edges(model):
        for c in m.candidate_modules():
            hooks.append(c.register_forward_hook(lambda *_, m=m: counts.__setitem__(m, counts.get(m, 0) + 1)))
    model(x)
    for h in hooks:
        h.remove()
    return [counts.get(m, 0) for m in mixing_edges(model)]


def observe(name: str, model, method: Method, x) -> None:
    if name == "partial":  # every candidate sees half of the edge's channels
        for m, inp in edge_inputs(model, x).items():
            assert m.partial == 2 and inp.shape[1] == m.channels
        seen = []
        hooks = [c.register_forward_pre_hook(lambda mod, a, m=m: seen.append((a[0].shape[1], m.channels)) and None)
                 for m in mixing_edges(model) for c in m.candidate_modules()]
        model(x)
        [h.remove() for h in hooks]
        assert seen and all(c * 2 == full for c, full in seen)
    elif name == "edge_norm":  # β enter the forward pass
        before = model(x)
        with torch.no_grad():
            for b in model.edge_betas.values():
                b[1] += 3.0  # an edge of a node with two inputs
        assert not torch.allclose(before, model(x)) and len(model.alphas()) == 2 * len(model.arch)
    elif name == "aux_skip":  # the auxiliary skip's coefficient in the output, outside the op weights
        method.on_epoch(5, 10)
        m, inp = next(iter(edge_inputs(model, x).items()))
        zeros = torch.zeros(len(m.candidate_modules()))
        assert all(e.aux_coef == 0.5 for e in mixing_edges(model))
        assert torch.allclose(m.mixed(zeros, inp), 0.5 * m.aux(inp))
    elif name == "gumbel":  # one op computed per edge
        w = model.arch_weights()
        assert all(set(v.detach().unique().tolist()) <= {0.0, 1.0} for v in w.values())
        model.train()
        assert set(calls_per_edge(model, x)) == {1}
    elif name == "rsps":  # a uniformly drawn architecture, and the network it weights
        w = model.sample_weights()
        assert all(set(v.unique().tolist()) <= {0.0, 1.0} for v in w.values())
        assert not torch.allclose(model(x, weights=w), model(x))
    elif name == "dirichlet":  # a sample (rows sum to 1, two draws differ) and the KL term
        a, b = model.arch_weights(), model.arch_weights()
        k = next(iter(a))
        assert torch.allclose(a[k].sum(-1), torch.ones(())) and not torch.equal(a[k], b[k])
        assert method.loss(model).item() >= 0
    elif name == "zero_one":  # on the ACTIVATED weights (softmax here), not on σ(α)
        with torch.no_grad():
            for p in model.arch.values():
                p.copy_(torch.linspace(-2, 2, p.numel()).view_as(p))
        act = torch.cat([torch.softmax(p, -1).reshape(-1) for p in model.arch.values()])
        assert method.loss(model).item() == pytest.approx(-10 * ((act - 0.5) ** 2).mean().item(), rel=1e-6)
    elif name == "beta_decay":
        method.on_epoch(5, 10)
        rows = torch.cat([torch.log(torch.exp(p).sum(-1)).reshape(-1) for p in model.arch.values()])
        assert method.loss(model).item() == pytest.approx(25.0 * rows.mean().item(), rel=1e-5)
    elif name == "arch_warmup":  # α holds still in the first 2 epochs: a single-level step moves w only
        from sldarts.config import SearchConfig
        from sldarts.strategies import SingleLevel, make_optimizers

        w_opt, a_opt = make_optimizers(model, SearchConfig(arch_optimizer="sgd", arch_lr=1.0))
        strat = SingleLevel(model, model, w_opt, a_opt, method=method)
        y = torch.zeros(len(x), dtype=torch.long)
        for epoch, moves in [(1, False), (2, True)]:
            method.on_epoch(epoch, 10)
            before = [a.detach().clone() for a in model.alphas()]
            strat.step(x, y)
            assert any(not torch.equal(a, b) for a, b in zip(model.alphas(), before, strict=True)) == moves
    elif name == "pdarts":  # dropout on the identity skips while training, at the stage's rate (0.5 at epoch 0)
        method.on_epoch(0, 10)
        ident = next(c for m in mixing_edges(model) for c in m.candidate_modules() if isinstance(c, torch.nn.Identity))
        ones = torch.ones(4, 4, 4, 4)
        model.train()
        assert set(ident(ones).unique().tolist()) == {0.0, 2.0}
        model.eval()
        assert torch.equal(ident(ones), ones)
    elif name == "smoothing":
        method.on_epoch(0, 10)
        before = {k: v.clone() for k, v in model.arch.items()}
        w = method.weight_step_weights(model)
        clean = model._activated()
        for k in w:
            assert not torch.equal(w[k], clean[k]) and torch.allclose(w[k].sum(-1), torch.ones(()))
            assert torch.equal(model.arch[k], before[k])  # α itself untouched
    elif name == "early_stop":  # α unchanged over two epochs: a rule ends the search
        assert method.stop_reason() is None
        method.end_epoch(1, 10, model)
        method.end_epoch(2, 10, model)
        assert method.stop_reason().startswith("early_stop: ")
    elif name == "setn":  # the weight step trains a uniform one-hot sample; templates are one-hot draws from α
        w, t = method.weight_step_weights(model), method.get("setn").draw(model)
        for d in (w, t):
            assert all(set(v.unique().tolist()) <= {0.0, 1.0} for v in d.values())
        assert not torch.allclose(model(x, weights=w), model(x))
    elif name == "enas":  # a controller draws one op per α row; it is neither α nor a weight of the supernet
        part = method.get("enas")
        w = part.sample(model)
        assert {k: v.shape for k, v in w.items()} == {k: v.shape for k, v in model.arch.items()}
        assert all(set(v.unique().tolist()) <= {0.0, 1.0} for v in w.values())
        own = {id(p) for p in part.controller.parameters()}
        assert own and not own & {id(p) for p in model.parameters()}
        assert "controller" in str(method.state_dict()["enas"].keys()) or method.state_dict()["enas"]
    elif name == "grouped_drop":  # while training some ops of an edge are not computed, never all of them
        model.eval()
        full = calls_per_edge(model, x)
        model.train()
        draws = [calls_per_edge(model, x) for _ in range(20)]
        assert all(0 < c <= f for d in draws for c, f in zip(d, full, strict=True))
        assert any(c < f for d in draws for c, f in zip(d, full, strict=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_part_on_every_kind_of_supernet_is_applied_or_refused(name, kind):
    model, x = supernet(kind)
    method = method_with(name)
    if (name, kind) in REFUSED:
        with pytest.raises(SldartsError, match=re.escape(REFUSED[name, kind])) as err:
            method.apply(model)
        assert "\n" not in str(err.value)
        return
    method.apply(model)
    observe(name, model, method, x)


def test_the_matrix_covers_every_registered_part():
    sampling = {n for n, cls in PARTS.items() if cls.sampler and n not in ("softmax", "sigmoid")}
    assert {n for n, cls in PARTS.items() if not cls.sampler} | sampling == set(OPTIONS)


def test_a_refused_part_stops_the_search_before_the_first_step(tmp_path):
    train, valid = userspace.digits()
    with pytest.raises(SldartsError, match=r"partial channels \(PC-DARTS\)") as err:
        sldarts.search(model=userspace.build(10, 1), train_data=train, valid_data=valid, method="pcdarts",
                       out=str(tmp_path / "r"), epochs=1, train_samples=32, batch_size=16, progress="none",
                       workers=0)
    assert "\n" not in str(err.value) and not (tmp_path / "r" / "metrics.jsonl").exists()


def test_config_yaml_records_only_what_ran():
    from sldarts.methods import resolve

    cfg = load_config(None, {"activation": "softmax", "tau_max": 5.0})
    resolve(cfg)
    assert "tau_max" not in cfg.to_dict() and "partial_channels" not in cfg.to_dict()
    cfg = load_config(None, {"method": "gdas"})
    resolve(cfg)
    assert cfg.to_dict()["tau_max"] == 10.0 and cfg.impl == "reference"
    with pytest.raises(SldartsError, match="method=gdas samples with activation=gumbel; activation=softmax"):
        resolve(load_config(None, {"method": "gdas", "activation": "softmax"}))
    with pytest.raises(SldartsError, match="method=pcdarts is made of partial channels"):
        resolve(load_config(None, {"method": "pcdarts", "partial_channels": 1}))
    assert sampler_for("softmax") is PARTS.get("softmax")


def test_a_users_part_runs_on_nb201_and_on_a_choice_model_with_its_own_checked_option(tmp_path, capsys):
    import userparts

    from sldarts.cli import main

    tiny = ["epochs=1", "train_samples=32", "batch_size=16", "eval_samples=16", "progress=none", "workers=0"]
    userparts.L2.last = None
    assert main(["search", "parts=userparts:L2", "l2_weight=0.5", "l2_reduce=mean", "channels=4", "cells=1",
                 f"out={tmp_path / 'nb'}", *tiny]) == 0
    assert userparts.L2.last is not None and userparts.L2.last > 0  # its loss term was computed
    saved = (tmp_path / "nb" / "config.yaml").read_text()
    assert "parts: userparts:L2" in saved and "l2_reduce: mean" in saved
    assert main(["search", "parts=userparts:L2", "l2_reduce=meen", f"out={tmp_path / 'x'}", *tiny]) == 2
    assert "l2_reduce='meen' is not one of sum, mean (did you mean 'mean'?)" in capsys.readouterr().err
    userparts.L2.last = None
    train, valid = userspace.digits()
    res = sldarts.search(model=userspace.build(10, 1), train_data=train, valid_data=valid, parts="userparts:L2",
                         l2_weight=0.1, out=str(tmp_path / "choice"), epochs=1, train_samples=32, batch_size=16,
                         eval_samples=16, progress="none", workers=0)
    assert userparts.L2.last is not None and res["config"]["part_options"] == {"l2_weight": 0.1}


def test_beta_decay_loss_and_gradient_match_the_closed_form():
    from sldarts.methods.betadarts import BetaDecay

    model, _ = supernet("darts")
    part = BetaDecay(BetaDecay.Options(beta_weight=50.0))
    Method("betadarts", "bilevel", 1, [SoftmaxSampler(), part]).apply(model)
    part.on_epoch(0, 100)
    assert part.loss(model) is None  # λ grows linearly from 0: 50 · epoch / epochs
    part.on_epoch(30, 100)
    assert part.lam == pytest.approx(15.0)
    loss = part.loss(model)
    alphas = list(model.arch.values())
    rows = sum(a.shape[0] for a in alphas)
    grads = torch.autograd.grad(loss, alphas)
    for a, g in zip(alphas, grads, strict=True):  # d/dα of λ·mean_r logsumexp(α_r) = λ/R · softmax(α_r)
        assert torch.allclose(g, 15.0 / rows * torch.softmax(a.detach(), -1), atol=1e-7)
    with torch.no_grad():  # and a finite difference along a random direction
        d = [torch.randn_like(a) for a in alphas]
        h = 1e-3
        for a, v in zip(alphas, d, strict=True):
            a.add_(h * v)
        up = part.loss(model)
        for a, v in zip(alphas, d, strict=True):
            a.sub_(2 * h * v)
        down = part.loss(model)
        for a, v in zip(alphas, d, strict=True):
            a.add_(h * v)
    directional = sum((g * v).sum() for g, v in zip(grads, d, strict=True))
    assert ((up - down) / (2 * h)).item() == pytest.approx(directional.item(), rel=1e-2)


def _smoothing(kind: str, sampler=SoftmaxSampler):
    from sldarts.methods.sdarts import RandomSmoothing

    model, x = supernet(kind)
    part = RandomSmoothing(RandomSmoothing.Options(sdarts_epsilon=0.3))
    method = Method("sdarts", "bilevel", 1, [sampler(), part])
    method.apply(model)
    return model, x, part, method


def test_random_smoothing_perturbation_bound_and_schedule():
    from sldarts.methods.samplers import SigmoidSampler

    model, _, part, _ = _smoothing("nb201", SigmoidSampler)
    part.on_epoch(0, 10)
    assert part.eps == pytest.approx(0.03)
    part.on_epoch(5, 10)
    assert part.eps == pytest.approx(0.03 + 0.27 * 0.5)  # SDARTS: 0.03 + (ε − 0.03) · epoch / epochs
    clean = model._activated()["cell"]
    for _ in range(20):  # sigmoid: each weight moves by at most ε and stays in [0, 1]
        w = part.weight_step_weights(model)["cell"]
        assert (w - clean).abs().max() <= part.eps + 1e-6 and w.min() >= 0 and w.max() <= 1
    soft, _, spart, _ = _smoothing("nb201")
    spart.on_epoch(9, 10)
    w = spart.weight_step_weights(soft)["cell"]  # softmax: clipped to [0, 1], each edge renormalised to 1
    assert torch.allclose(w.sum(-1), torch.ones(6)) and w.min() >= 0
    row = spart.perturb(torch.full((1, 5), -1.0))  # clipped to all zeros: the largest noisy entry is 1
    assert sorted(row[0].tolist()) == [0.0, 0.0, 0.0, 0.0, 1.0]


@pytest.mark.parametrize("optim", ["bilevel", "single"])
def test_random_smoothing_never_perturbs_alpha_in_its_own_update(optim):
    from sldarts.config import SearchConfig
    from sldarts.strategies import FirstOrder, SingleLevel, make_optimizers

    model, x, part, method = _smoothing("nb201")
    part.on_epoch(9, 10)
    y = torch.tensor([1, 2])
    xa, ya = x.flip(0), y.flip(0)
    cfg = SearchConfig(lr=0.1, momentum=0.0, weight_decay=0.0, arch_optimizer="sgd", arch_lr=1.0, arch_momentum=0.0,
                       arch_weight_decay=0.0)
    w_opt, a_opt = make_optimizers(model, cfg)
    cls = FirstOrder if optim == "bilevel" else SingleLevel
    strat = cls(model, model, w_opt, a_opt, grad_clip=0.0, method=method)
    bx, by = (xa, ya) if optim == "bilevel" else (x, y)
    alpha = model.arch["cell"].detach().clone()
    (g_clean,) = torch.autograd.grad(strat.loss(bx, by)[0], [model.arch["cell"]])  # at the unperturbed α
    name, conv = next((n, p) for n, p in model.named_weights() if n.endswith("weight") and p.dim() == 4)
    ref = copy.deepcopy(model)  # the state the weight step starts from
    torch.manual_seed(5)
    strat.step(x, y, lambda: (xa, ya))
    assert torch.allclose(model.arch["cell"].detach(), alpha - g_clean, atol=1e-6)  # the clean gradient
    if optim == "bilevel":  # the weight step follows the α step
        with torch.no_grad():
            ref.arch["cell"].copy_(model.arch["cell"])
    torch.manual_seed(5)
    noisy = part.weight_step_weights(ref)  # the noise the step drew
    assert not torch.allclose(noisy["cell"], ref._activated()["cell"])
    ref_conv = dict(ref.named_parameters())[name]
    (g_w,) = torch.autograd.grad(strat.loss(x, y, net=ref, weights=noisy)[0], [ref_conv])
    assert torch.allclose(conv.detach(), ref_conv.detach() - 0.1 * g_w, atol=1e-6)  # on the perturbed weights


def test_new_presets_resume_exactly_after_kill_9_single_level_on_a_choice_model(tmp_path):
    # bi-level on NB201: test_methods' kill -9 test of every preset; both together: one run of each kind
    from test_reliability import killed_and_resumed

    base = ["search", "epochs=2", "train_samples=64", "batch_size=32", "eval_samples=32", "deterministic=true",
            "threads=1", "progress=lines", "log_every=1", "workers=0", "method=betadarts", "sdarts_epsilon=0.3",
            "optim=single", "space=tests/userspace.py:build", "dataset=tests/userspace.py:digits"]
    full, part = killed_and_resumed(base, tmp_path)
    key = full["arch_key"]
    assert full[key] == part[key]


def test_report_marks_presets_that_differ_from_the_original():
    from sldarts.report import differs, markdown

    assert differs("gdas", [{"epochs": 250}]) == [] and differs("gdas", [{"epochs": 250}, {"epochs": 50}]) == [
        "epochs=250"]
    assert differs("pcdarts", [{"batch_size": 256, "lr": 0.1, "arch_lr": 6e-4, "arch_warmup": 15}]) == []
    rows = [{"method": "gdas", "seeds": [0], "cells": [("c", 1)], "differs": ["epochs=250"]},
            {"method": "darts-minus", "seeds": [0], "cells": [("c", 1)], "differs": []}]
    md = markdown(["method"], [], rows)
    assert "| gdas * |" in md and "| darts-minus |" in md and "gdas (epochs=250 in its own code)" in md


def test_every_built_in_part_option_is_the_config_key_it_reads():
    """A built-in part's options are config keys too (config.yaml, the CLI, the reference): both declarations
    must agree on the default, the type and the allowed values, or a part would run with other values than
    the key says."""
    import dataclasses
    import typing

    from sldarts.config import SearchConfig
    from sldarts.methods import _builtins

    _builtins()
    keys = {f.name: f for f in dataclasses.fields(SearchConfig)}
    key_types = typing.get_type_hints(SearchConfig)
    seen = 0
    for name in PARTS.names():
        cls = PARTS.get(name)
        if not cls.__module__.startswith("sldarts.methods."):
            continue
        types = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            key, seen = keys[f.name], seen + 1
            assert (f.default, types[f.name]) == (key.default, key_types[f.name]), (name, f.name)
            for meta in ("range", "choices"):
                assert f.metadata.get(meta) == key.metadata.get(meta), (name, f.name, meta)
    assert seen >= 25  # every method's options: GDAS's temperatures to P-DARTS's stages


@pytest.mark.parametrize("kind", KINDS)
def test_setn_top_on_every_kind_of_supernet_is_applied_or_refused(kind):
    """setn_select=top: the best of the most probable templates where every choice is one op (NB201, a custom
    chain); refused where a choice also keeps inputs (DARTS's nodes, this Choice model's InputChoice)."""
    from sldarts.methods.setn import top_templates

    model, x = supernet(kind)
    cls = part_class("setn")
    method = Method("", "bilevel", 1, [SoftmaxSampler(), cls(cls.Options(setn_samples=3, setn_select="top"))])
    if kind in ("darts", "choice"):
        with pytest.raises(SldartsError, match="setn_select=top enumerates templates of one op per choice"):
            method.apply(model)
        return
    method.apply(model)
    asked = []
    y = torch.zeros(len(x), dtype=torch.long)
    best, rec = method.get("setn").select(model, lambda n: asked.append(n) or [(x, y)] * n, seed=0)
    top = top_templates({k: model.activation(a) for k, a in model.arch.items()}, 3)
    assert asked == [3] and rec["setn"]["select"] == "top" and rec["setn"]["samples"] == 3
    assert any(all(torch.equal(best[k], t[k]) for k in t) for t in top)

