"""The one-shot methods of the paper's comparison, each checked against its defining computation, and every
preset run (both spaces, single-level where it makes sense, a user model, kill -9 and resume)."""

import math

import pytest
import torch
import userspace
from test_reliability import killed_and_resumed

import sldarts
from sldarts.activations import Dirichlet, Gumbel
from sldarts.config import METHODS, SearchConfig, load_config
from sldarts.errors import SldartsError
from sldarts.methods import Method
from sldarts.methods.dartsminus import AuxSkip
from sldarts.methods.fairdarts import ZeroOne
from sldarts.methods.pcdarts import EdgeNorm, PartialChannels
from sldarts.methods.samplers import SigmoidSampler, SoftmaxSampler
from sldarts.spaces.base import MixedOp, channel_shuffle
from sldarts.spaces.darts import OPS as DOPS
from sldarts.spaces.darts import DartsSupernet
from sldarts.spaces.nb201 import NB201Supernet, SearchCell
from sldarts.strategies import RandomSampling, SingleLevel, make_optimizers

TINY = dict(epochs=1, train_samples=64, batch_size=32, eval_samples=32, channels=4, progress="none",
            rsps_samples=5)
FEW = {"setn": {"setn_samples": 5}, "enas": {"enas_samples": 5}}  # architectures scored at the end (100, 10)


def test_gdas_hard_sample_is_one_hot_and_passes_the_soft_gradient():
    alpha = torch.randn(6, 5, requires_grad=True)
    act = Gumbel(tau_max=10, tau_min=0.1)
    act.set_progress(3, 10)
    c = torch.randn(6, 5)
    torch.manual_seed(7)
    w = act.forward_weights(alpha, training=True)
    assert torch.equal(w.detach().sum(1), torch.ones(6)) and set(w.detach().unique().tolist()) <= {0.0, 1.0}
    (g_hard,) = torch.autograd.grad((w * c).sum(), alpha)
    # the same Gumbel noise, soft: the straight-through estimator's gradient is exactly this one's
    torch.manual_seed(7)
    gumbels = -torch.empty_like(alpha).exponential_().log()
    soft = torch.softmax((alpha.log_softmax(-1) + gumbels) / act.tau, dim=-1)
    (g_soft,) = torch.autograd.grad((soft * c).sum(), alpha)
    assert torch.allclose(g_hard, g_soft, atol=1e-6)
    assert torch.equal(w.detach().argmax(1), soft.detach().argmax(1))
    # evaluation: one-hot argmax α, no noise
    assert torch.equal(act.forward_weights(alpha, training=False).argmax(1), alpha.argmax(1))


def test_gdas_temperature_schedule_first_and_last_epoch():
    act = Gumbel(tau_max=10, tau_min=0.1)
    act.set_progress(0, 250)
    assert act.tau == 10
    act.set_progress(249, 250)
    assert act.tau == pytest.approx(0.1)
    act.set_progress(125, 251)
    assert act.tau == pytest.approx(5.05)  # linear


def test_gdas_computes_only_the_sampled_op():
    calls = []
    ops = {name: torch.nn.Identity() for name in ("a", "b", "c")}
    for name, op in ops.items():
        op.register_forward_hook(lambda m, i, o, name=name: calls.append(name))
    m = MixedOp(ops)
    m.hard = True
    w = torch.tensor([0.0, 1.0, 0.0], requires_grad=True)
    out = m(torch.ones(1, 2, 3, 3), w)
    assert calls == ["b"] and torch.equal(out, torch.ones(1, 2, 3, 3))
    out.sum().backward()
    assert torch.equal(w.grad, torch.full((3,), 18.0))  # the others' weights are added as they are (GDAS)


def test_drnas_kl_matches_the_closed_form_and_eval_uses_the_mean():
    alpha = torch.randn(3, 5)
    act = Dirichlet(kl_weight=1e-3)
    a = torch.nn.functional.elu(alpha) + 1
    b = torch.ones_like(a)
    a0, b0 = a.sum(-1), b.sum(-1)
    closed = (torch.lgamma(a0) - torch.lgamma(a).sum(-1) - torch.lgamma(b0) + torch.lgamma(b).sum(-1)
              + ((a - b) * (torch.digamma(a) - torch.digamma(a0)[:, None])).sum(-1)).sum()
    assert act.regularizer([alpha]).item() == pytest.approx(1e-3 * closed.item(), rel=1e-5)
    assert torch.allclose(act(alpha), a / a0[:, None])
    assert torch.allclose(act.forward_weights(alpha, training=False), a / a0[:, None])
    torch.manual_seed(0)
    draws = torch.stack([act.forward_weights(alpha, training=True) for _ in range(4000)])
    assert torch.allclose(draws.mean(0), a / a0[:, None], atol=0.01)  # samples centre on the mean
    req = alpha.clone().requires_grad_()
    act.forward_weights(req, training=True).sum().backward()  # rsample: a pathwise gradient
    assert req.grad is not None


def test_partial_channels_shape_shuffle_bypass_and_parameters():
    x = torch.arange(8.0).view(1, 8, 1, 1).expand(2, 8, 4, 4).contiguous()
    assert channel_shuffle(x, 4)[0, :, 0, 0].tolist() == [0, 2, 4, 6, 1, 3, 5, 7]
    cell = SearchCell(8, True)
    PartialChannels(PartialChannels.Options(4)).adapt(cell)
    m = cell.edges[0]
    w = torch.zeros(5)  # the mixed ops contribute nothing: what is left is the shuffled bypass
    out = m(x, w)
    assert out.shape == x.shape
    assert out[0, :, 0, 0].tolist() == [0, 2, 4, 6, 0, 3, 5, 7]  # channels 0-1 went through the ops (zero)
    # NB201 ops on C/4 = 2 channels: 1x1 conv 2*2 + 2 bias, 3x3 conv 2*2*9 + 2 bias, per edge, 6 edges
    assert sum(p.numel() for p in cell.parameters()) == 6 * ((4 + 2) + (36 + 2))
    full = SearchCell(8, True)
    assert sum(p.numel() for p in full.parameters()) == 6 * ((64 + 8) + (576 + 8))
    red = DartsSupernet(8, 3, impl="reference")
    PartialChannels(PartialChannels.Options(4)).adapt(red)
    red = red.cells[1].edges[0]
    assert red(torch.randn(2, 16, 8, 8), torch.full((8,), 0.125)).shape == (2, 16, 4, 4)  # stride 2: pooled bypass


def test_edge_normalised_derivation_on_hand_made_alpha_and_beta():
    net = DartsSupernet(4, 3, impl="reference")
    EdgeNorm().adapt(net)
    with torch.no_grad():
        for key in ("normal", "reduce"):
            net.arch[key].zero_()
            net.arch[key][:, DOPS.index("sep_conv_3x3")] = 1.0  # every edge equally strong by α
            net.edge_betas[key].zero_()
            net.edge_betas[key][3] = 2.0  # node 3: edge 3<-1 (row 3) favoured by β
            net.edge_betas[key][4] = 1.0  # then 3<-2
    factors = net.edge_factors("normal")
    e = math.exp
    assert factors[2:5].tolist() == pytest.approx([1 / (1 + e(2) + e(1)), e(2) / (1 + e(2) + e(1)),
                                                   e(1) / (1 + e(2) + e(1))])
    assert factors[0:2].tolist() == pytest.approx([0.5, 0.5])
    gene = net.derive()["normal"]
    assert [src for _, src in gene[2:4]] == [1, 2]  # β decided node 3's inputs (α alone could not)
    d = {x.name: x for x in net.decisions()}
    assert (d["normal/node3"].winner, d["normal/node3"].runner_up) == ("edge 3<-2", "edge 3<-0")
    assert len(net.alphas()) == 4 and "edge_betas.normal" in net.named_alphas()  # β are architecture params


def test_fairdarts_zero_one_loss_value():
    net = NB201Supernet(4, 1, impl="reference")
    with torch.no_grad():
        net.arch["cell"].copy_(torch.linspace(-3, 3, 30).view(6, 5))
    w_opt, a_opt = make_optimizers(net, SearchConfig())
    method = Method("fairdarts", "single", 1, [SigmoidSampler(), ZeroOne(ZeroOne.Options(10.0))])
    strat = SingleLevel(net, net, w_opt, a_opt, method=method)
    s = torch.sigmoid(torch.linspace(-3, 3, 30))
    assert strat.arch_regularizer().item() == pytest.approx(-10 * ((s - 0.5) ** 2).mean().item(), rel=1e-6)
    assert SingleLevel(net, net, w_opt, a_opt).arch_regularizer() is None


def test_darts_minus_auxiliary_skip_coefficient_per_epoch():
    net = NB201Supernet(4, 1, impl="reference")
    method = Method("darts-minus", "bilevel", 1, [SoftmaxSampler(), AuxSkip(AuxSkip.Options(True))])
    method.apply(net)
    edges = [m for m in net.modules() if isinstance(m, MixedOp)]
    for epoch, expected in [(0, 1.0), (1, 0.9), (5, 0.5), (9, 0.1)]:
        method.on_epoch(epoch, 10)
        assert all(m.aux_coef == pytest.approx(expected) for m in edges)
    method.on_epoch(5, 10)
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(edges[0](x, torch.zeros(5)), 0.5 * x)  # outside the weights: a scaled skip


def _chi2(counts: list[int]) -> float:
    n = sum(counts) / len(counts)
    return sum((c - n) ** 2 / n for c in counts)


def test_rsps_samples_uniformly_and_derives_the_best_scored():
    torch.manual_seed(0)
    net = NB201Supernet(4, 1, impl="reference")
    counts = torch.zeros(6, 5)
    for _ in range(2000):
        counts += net.sample_weights()["cell"]
    # chi-square with 4 degrees of freedom: 18.47 is the 0.1% critical value
    assert all(_chi2(row.int().tolist()) < 18.47 for row in counts)
    darts = DartsSupernet(4, 3, impl="reference")
    pairs, ops = {}, torch.zeros(7)
    for _ in range(2000):
        w = darts.sample_weights()["normal"]
        assert w[:, 0].sum() == 0 and w.sum() == 8  # never `none`; two inputs per node
        kept = tuple(int(i) for i in w[2:5].sum(1).nonzero().flatten())  # node 3's pair of inputs
        pairs[kept] = pairs.get(kept, 0) + 1
        ops += w[:, 1:].sum(0)
    assert len(pairs) == 3 and _chi2(list(pairs.values())) < 13.82  # 2 dof
    assert _chi2(ops.int().tolist()) < 22.46  # 6 dof
    # the derived architecture is the best scored one
    net.set_sparse(True)
    w_opt, a_opt = make_optimizers(net, SearchConfig())
    strat = RandomSampling(net, net, w_opt, a_opt)
    batches = [(torch.randn(16, 3, 8, 8), torch.randint(0, 10, (16,))) for _ in range(2)]
    best, scores = strat.select(batches, 30, seed=3)
    assert len(scores) == 30 and len(set(scores)) > 1
    again, scores2 = strat.select(batches, 30, seed=3)
    assert scores2 == scores and torch.equal(again["cell"], best["cell"])  # reproducible, RNG untouched
    net.train()
    with torch.no_grad():
        hits = sum(int((net(x, weights=best).argmax(1) == y).sum()) for x, y in batches)
    assert hits / 32 == max(scores)


@pytest.mark.parametrize("space,cells", [("darts", 3)])  # nb201: each preset's run in the kill -9 test below
@pytest.mark.parametrize("method", [m for m in METHODS if m != "pdarts"])  # its stages: tests/test_pdarts.py
def test_every_preset_runs_on_both_spaces(tmp_path, method, space, cells):
    # the tiny run: epochs=1 train_samples=256 channels=4, cells=3 (DARTS)
    if (method, space) == ("enas", "darts"):  # its controller samples one op per α row: refused in one line
        with pytest.raises(SldartsError, match="ENAS controller: the DartsSupernet's architectures are not one op"):
            sldarts.search(method=method, space=space, cells=cells, out=str(tmp_path / "r"), **TINY)
        return
    res = sldarts.search(method=method, space=space, cells=cells, out=str(tmp_path / "r"),
                         **{**TINY, "train_samples": 256, "batch_size": 64, **FEW.get(method, {})})
    check_preset_result(res, method, space, tmp_path / "r", samples=5)


def check_preset_result(res: dict, method: str, space: str, run, samples: int) -> None:
    """What a preset's finished search must show: its keys expanded into config.yaml, a valid architecture,
    the cells it ran on, and the record of a part that chose by scores."""
    cfg = res["config"]
    for k, v in {**METHODS[method], **{k: samples for k in FEW.get(method, {})}}.items():
        assert cfg[k] == v  # written expanded into config.yaml
    key = res["arch_key"]
    assert sldarts.config.load_config(run / "config.yaml").method == method
    arch = get_arch(space, res[key])
    assert arch and 0 <= res["param_free_ratio"] <= 1
    fused = ("single-darts", "darts", "drnas", "fairdarts", "betadarts", "sdarts", "setn", "dartsplus")
    assert cfg["impl"] == ("fused" if method in fused else "reference")
    if method in ("rsps", "setn", "enas"):  # the architecture chosen by scores: its record
        rec = res[method]
        assert rec["samples"] == samples
        assert rec["best_score"] >= rec["mean_score"]


def get_arch(space: str, arch):
    from sldarts.spaces import get_space

    return get_space(space).parse(arch)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("rsps", "enas", "single-darts", "pdarts")])
def test_presets_combine_with_single_level(tmp_path, method):
    res = sldarts.search(method=method, optim="single", cells=1, out=str(tmp_path / "r"), **TINY)
    assert (res["config"]["optim"], res["config"]["order"], res["config"]["method"]) == ("single", 1, method)
    assert res["config"]["activation"] == METHODS[method]["activation"]


def test_a_copy_keeps_keys_given_over_a_preset():
    # auto_lr's retries copy the config with another lr: single-level GDAS must stay single-level
    cfg = load_config(None, {"method": "gdas", "optim": "single"}).replace(lr=0.1)
    assert (cfg.optim, cfg.activation, cfg.lr) == ("single", "gumbel", 0.1)


def test_refused_combinations_are_one_line():
    with pytest.raises(SldartsError, match="method=rsps with optim=bilevel makes no sense"):
        load_config(None, {"method": "rsps", "optim": "bilevel"})
    with pytest.raises(SldartsError, match="method=enas with optim=single makes no sense: ENAS trains"):
        load_config(None, {"method": "enas", "optim": "single"})
    with pytest.raises(SldartsError, match="did you mean 'gdas'"):
        load_config(None, {"method": "gdsa"})
    with pytest.raises(SldartsError, match="partial_channels=3 must divide"):
        sldarts.search(method="pcdarts", partial_channels=3, channels=4, cells=1, out="/tmp/never", **{
            k: v for k, v in TINY.items() if k != "channels"})
    assert load_config(None, {"method": "gdas", "activation": "softmax"}).activation == "softmax"  # explicit wins


@pytest.mark.parametrize("method", ["gdas", "drnas", "fairdarts", "rsps"])
def test_methods_on_a_user_model(tmp_path, method):
    train, valid = userspace.digits()
    res = sldarts.search(model=userspace.build(10, 1), train_data=train, valid_data=valid, method=method,
                         out=str(tmp_path / "r"), workers=0, **{k: v for k, v in TINY.items() if k != "channels"})
    assert set(res["choices"]) == {"block", "b3", "merge"}


@pytest.mark.parametrize("method", [m for m in METHODS if m != "pdarts"])  # across stages: tests/test_pdarts.py
def test_every_preset_resumes_exactly_after_kill_9(tmp_path, method):
    args = ["search", f"method={method}", "epochs=2", "train_samples=96", "channels=4", "cells=1", "batch_size=32",
            "eval_samples=32", "deterministic=true", "threads=1", "progress=lines", "log_every=1", "rsps_samples=4",
            *[f"{k}=4" for k in FEW.get(method, {})]]
    full, part = killed_and_resumed(args, tmp_path)
    assert full["arch"] == part["arch"]
    check_preset_result(full, method, "nb201", tmp_path / "full", samples=4)
