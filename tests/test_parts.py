"""Every method part on every kind of supernet: applied with an effect a test observes, or refused in one line
before the first step (the refused ones are listed in docs/methods.md). Tiny models, one forward each."""

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
           "smoothing": {"sdarts_epsilon": 0.3}, "rsps": {}, "gumbel": {}, "dirichlet": {}}
REFUSED = {("partial", "choice"): "partial channels (PC-DARTS): the candidates of Choice",
           ("edge_norm", "choice"): "edge normalisation (PC-DARTS): the ChoiceSupernet supernet does not say",
           ("edge_norm", "custom"): "edge normalisation (PC-DARTS): the ChainSupernet supernet does not say"}


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
    return Method("", "rsps" if name == "rsps" else "bilevel", 1, parts)


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
    elif name in ("gumbel", "rsps"):  # one op computed per edge
        w = model.sample_weights() if name == "rsps" else model.arch_weights()
        assert all(set(v.detach().unique().tolist()) <= {0.0, 1.0} for v in w.values())
        model.train()
        assert set(calls_per_edge(model, x)) == {1}
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
    elif name == "smoothing":
        method.on_epoch(0, 10)
        before = {k: v.clone() for k, v in model.arch.items()}
        w = method.weight_step_weights(model)
        clean = model._activated()
        for k in w:
            assert not torch.equal(w[k], clean[k]) and torch.allclose(w[k].sum(-1), torch.ones(()))
            assert torch.equal(model.arch[k], before[k])  # α itself untouched


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
