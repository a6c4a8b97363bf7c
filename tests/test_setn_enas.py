"""SETN's template selection and ENAS's controller, each against a computation made here by hand (the presets'
runs on both spaces and their exact resume after kill -9 are in test_methods.py)."""

import pytest
import torch
from torch import nn

import sldarts.methods.enas as enas_mod
from sldarts.config import load_config
from sldarts.errors import SldartsError
from sldarts.methods.enas import Controller, Enas, EnasOptions
from sldarts.methods.setn import Setn, SetnOptions, keeps_inputs, sample_from, top_templates
from sldarts.spaces.darts import OPS as DOPS
from sldarts.spaces.darts import DartsSupernet
from sldarts.spaces.nb201 import NB201Supernet


def test_setn_templates_follow_alpha_and_the_best_scored_is_selected():
    torch.manual_seed(0)
    net = NB201Supernet(4, 1, impl="reference")
    probs = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]] * 6)
    counts = sum(sample_from(net, {"cell": probs})["cell"] for _ in range(1000))
    assert torch.all(counts.sum(1) == 1000) and torch.all(counts[:, 4] == 0)
    chi2 = (((counts[:, :4] - 1000 * probs[:, :4]) ** 2) / (1000 * probs[:, :4])).sum(1)
    assert torch.all(chi2 < 16.27)  # 3 degrees of freedom, 0.1% critical value
    darts = DartsSupernet(4, 3, impl="reference")
    w = sample_from(darts, {"normal": torch.full((14, len(DOPS)), 1 / len(DOPS))}, True)["normal"]
    assert w[:, 0].sum() == 0 and w.sum() == 8 and all(w[a:b].sum() == 2 for a, b in darts.node_groups())

    part = Setn(SetnOptions(setn_samples=8, setn_batches=2))
    part.adapt(net)
    assert not part.two_inputs and keeps_inputs(darts)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    asked = []
    best, rec = part.select(net, lambda n: asked.append(n) or batches[:n], seed=5)
    assert asked == [2] and rec["setn"]["samples"] == 8
    # the same 8 templates by hand (the seed's stream), each scored on the two batches with batch statistics
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        drawn = [part.draw(net) for _ in range(8)]
    scores = [enas_mod.accuracy_of(net, d, batches[:2]) for d in drawn]
    assert rec["setn"]["best_score"] == max(scores)
    assert torch.equal(best["cell"], drawn[scores.index(max(scores))]["cell"])
    # and the weight step trains a uniform sample, not α's distribution
    assert part.weight_step_weights(net)["cell"].sum(1).tolist() == [1.0] * 6


def test_setn_top_templates_are_the_most_probable_and_each_scored_on_its_own_batches():
    """setn_select=top: AutoDL-Projects' rule, against all 15,625 NB201 cells enumerated here."""
    import itertools

    torch.manual_seed(1)
    probs = torch.softmax(torch.randn(6, 5), 1)
    ranked = sorted(((sum(float(probs[r, c[r]].double().log()) for r in range(6)), c)
                     for c in itertools.product(range(5), repeat=6)), reverse=True)
    top = top_templates({"cell": probs}, 100)
    got = [float(sum(probs.double().log()[t["cell"].bool()])) for t in top]
    assert got == pytest.approx([s for s, _ in ranked[:100]], abs=1e-9)
    assert len({tuple(t["cell"].argmax(1).tolist()) for t in top}) == 100 and top[0]["cell"].sum(1).tolist() == [1] * 6

    net = NB201Supernet(4, 1, impl="reference")
    part = Setn(SetnOptions(setn_samples=3, setn_batches=2, setn_select="top"))
    part.adapt(net)
    batches = [(torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))) for _ in range(6)]
    asked = []
    best, rec = part.select(net, lambda n: asked.append(n) or batches[:n], seed=0)
    assert asked == [6] and rec["setn"]["samples"] == 3 and rec["setn"]["select"] == "top"
    expect = top_templates({k: net.activation(a) for k, a in net.arch.items()}, 3)
    scores = [enas_mod.accuracy_of(net, t, batches[2 * i:2 * i + 2]) for i, t in enumerate(expect)]
    assert rec["setn"]["best_score"] == max(scores)
    assert torch.equal(best["cell"], expect[scores.index(max(scores))]["cell"])
    assert len(top_templates({"a": probs[:2, :2], "b": probs[:1, :3]}, 100)) == 12  # every one of a smaller space
    import userspace

    from sldarts.spaces.model import ChoiceSupernet

    for model in (DartsSupernet(4, 3, impl="reference"), ChoiceSupernet(userspace.build(10, 1))):  # its InputChoice
        with pytest.raises(SldartsError, match="setn_select=top enumerates templates of one op per choice"):
            Setn(SetnOptions(setn_samples=3, setn_select="top")).adapt(model)


def _by_hand(ctl: Controller, choices: torch.Tensor, params: dict[str, torch.Tensor]):
    """Σ log p and Σ H of ``choices`` from the LSTM cell's equations (one layer), independent of nn.LSTM."""
    h = torch.zeros(1, ctl.lstm.hidden_size)
    c = torch.zeros_like(h)
    x = params["start"].reshape(1, -1)
    logp, ent = 0.0, 0.0
    for r in range(ctl.rows):
        gates = x @ params["lstm.weight_ih_l0"].T + params["lstm.bias_ih_l0"] + h @ params["lstm.weight_hh_l0"].T \
            + params["lstm.bias_hh_l0"]
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        z = h @ params["pred.weight"].T + params["pred.bias"]
        logits = (2.5 * torch.tanh(z / 5.0)).reshape(-1)
        lp = torch.log_softmax(logits, 0)
        logp = logp + lp[choices[r]]
        ent = ent - (lp.exp() * lp).sum()
        x = params["embed.weight"][choices[r]].reshape(1, -1)
    return logp, ent


def test_enas_reinforce_gradient_equals_the_hand_computed_one(monkeypatch):
    torch.manual_seed(0)
    part = Enas(EnasOptions(enas_lr=1e-3, enas_entropy=0.1, enas_baseline_decay=0.9))
    part.controller = Controller(rows=3, ops=4, hidden=5, layers=1)
    part.opt = torch.optim.SGD(part.controller.parameters(), lr=0.0)  # leaves the parameters as they are
    part.shapes = {"cell": torch.Size([3, 4])}
    net = NB201Supernet(4, 1, impl="reference")
    monkeypatch.setattr(enas_mod, "accuracy_of", lambda model, w, batches: 0.75)  # a fixed reward R
    part.baseline = 0.5
    torch.manual_seed(7)
    choices = part.controller()[0]
    torch.manual_seed(7)  # the step draws the same architecture
    assert part.reinforce(net, (torch.zeros(1), torch.zeros(1))) == 0.75
    b = 0.9 * 0.5 + 0.1 * 0.75
    assert part.baseline == pytest.approx(b)
    params = {n: p.detach().clone().requires_grad_() for n, p in part.controller.named_parameters()}
    logp, ent = _by_hand(part.controller, choices, params)
    loss = -(0.75 - b) * logp - 0.1 * ent
    expect = torch.autograd.grad(loss, list(params.values()))
    got = [p.grad for p in part.controller.parameters()]
    assert sum(float(g.norm() ** 2) for g in got) < 25  # below the clip at 5: the raw gradient
    for (n, _), e, g in zip(params.items(), expect, got, strict=True):
        assert torch.allclose(e, g, atol=1e-6), n
    # the output layer's bias in closed form: ∂logp/∂l = onehot − p, ∂H/∂l = −p (log p + H), l = 2.5 tanh(z/5)
    with torch.no_grad():
        out, grad = part.controller.start, torch.zeros(4)
        state = None
        for r in range(3):
            h, state = part.controller.lstm(out, state)
            z = part.controller.pred(h.reshape(-1))
            t = torch.tanh(z / 5.0)
            p = torch.softmax(2.5 * t, 0)
            H = -(p * p.log()).sum()
            dl = -(0.75 - b) * (nn.functional.one_hot(choices[r], 4) - p) - 0.1 * (-p * (p.log() + H))
            grad += dl * 2.5 / 5.0 * (1 - t ** 2)
            out = part.controller.embed(choices[r].reshape(1, 1))
    assert torch.allclose(part.controller.pred.bias.grad, grad, atol=1e-6)


def test_enas_baseline_state_and_refusals(monkeypatch):
    torch.manual_seed(0)
    net = NB201Supernet(4, 1, impl="reference")
    part = Enas(EnasOptions())
    part.adapt(net)
    rewards = iter([0.5, 1.0])
    monkeypatch.setattr(enas_mod, "accuracy_of", lambda model, w, batches: next(rewards))
    part.reinforce(net, (None, None))
    assert part.baseline == 0.5  # starts at the first reward
    part.reinforce(net, (None, None))
    assert part.baseline == pytest.approx(0.95 * 0.5 + 0.05 * 1.0)
    # the controller is not α and not a weight of the supernet
    ids = {id(p) for p in net.parameters()}
    assert not any(id(p) in ids for p in part.controller.parameters())
    again = Enas(EnasOptions())
    again.adapt(net)
    again.load_state_dict(part.state_dict())
    torch.manual_seed(3)
    a = part.sample(net)["cell"]
    torch.manual_seed(3)
    assert torch.equal(again.sample(net)["cell"], a) and again.baseline == part.baseline
    assert again.opt.state_dict()["state"].keys() == part.opt.state_dict()["state"].keys()
    # its options, each observed: the controller's lr, and the samples and batches of the final selection
    part = Enas(EnasOptions(enas_lr=0.02, enas_samples=4, enas_batches=3))
    part.adapt(net)
    assert part.opt.param_groups[0]["lr"] == 0.02
    batches = [(torch.randn(5, 3, 8, 8), torch.randint(0, 10, (5,))) for _ in range(4)]
    asked = []
    best, rec = part.select(net, lambda n: asked.append(n) or batches[:n], seed=0)
    assert asked == [3] and rec["enas"]["samples"] == 4
    assert rec["enas"]["best_score"] in {k / 15 for k in range(16)}  # hits out of the 3 x 5 images scored
    with pytest.raises(SldartsError, match="ENAS controller: the DartsSupernet's architectures are not one op"):
        Enas(EnasOptions()).adapt(DartsSupernet(4, 3, impl="reference"))
    with pytest.raises(SldartsError, match="method=enas with optim=single makes no sense"):
        load_config(None, {"method": "enas", "optim": "single"})
