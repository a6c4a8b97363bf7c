"""Strategies: what each step computes, checked against autograd and against the data it was given."""

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from sldarts.activations import Softmax
from sldarts.config import SearchConfig
from sldarts.data import Cycle, build_search_data
from sldarts.spaces.nb201 import NB201Supernet
from sldarts.strategies import FirstOrder, SecondOrder, SingleLevel, make_optimizers


def tiny_model(dtype=torch.float32, seed=0, impl="fused"):
    torch.manual_seed(seed)
    m = NB201Supernet(channels=2, cells=1, num_classes=3, in_channels=1, activation=Softmax(),
                      track_running_stats=False, impl=impl).to(dtype)
    with torch.no_grad():  # distinct α so that every op matters
        m.arch["cell"].normal_(0, 0.5)
    return m


def batch(n=6, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def opts(m, lr=0.1):
    cfg = SearchConfig(lr=lr, arch_lr=0.05, weight_decay=3e-4, arch_optimizer="sgd", arch_momentum=0.0)
    return make_optimizers(m, cfg)


def test_single_level_one_forward_one_backward_updates_both_from_that_batch(monkeypatch):
    m = tiny_model()
    ref = copy.deepcopy(m)
    w_opt, a_opt = opts(m)
    s = SingleLevel(m, m, w_opt, a_opt, grad_clip=0.0)
    x, y = batch()

    backward_calls = []
    real_backward = torch.autograd.backward

    def counting_backward(*args, **kwargs):
        backward_calls.append(1)
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "backward", counting_backward)
    forwards = []
    m.register_forward_hook(lambda *a: forwards.append(1))
    s.step(x, y)
    assert len(backward_calls) == 1 and len(forwards) == 1

    # The gradients the optimisers used are those of this batch's loss at the old parameters.
    loss = nn.functional.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, ref.alphas() + ref.weights())
    a_new = ref.alphas()[0] - 0.05 * grads[0]
    assert torch.allclose(m.alphas()[0], a_new, atol=1e-6)
    w_ref, g_w = ref.weights()[0], grads[1]
    w_new = w_ref - 0.1 * (g_w + 3e-4 * w_ref)  # first SGD step: momentum buffer = gradient
    assert torch.allclose(m.weights()[0], w_new, atol=1e-6)
    assert not torch.equal(m.weights()[0], ref.weights()[0]) and not torch.equal(m.alphas()[0], ref.alphas()[0])


def test_alpha_is_never_in_the_weight_optimizer():
    m = tiny_model()
    w_opt, a_opt = opts(m)
    in_w = {id(p) for g in w_opt.param_groups for p in g["params"]}
    assert not in_w & {id(a) for a in m.alphas()}
    assert {id(p) for g in a_opt.param_groups for p in g["params"]} == {id(a) for a in m.alphas()}


def test_first_order_alpha_batch_comes_from_the_held_out_split():
    cfg = SearchConfig(optim="bilevel", order=1, train_samples=200, batch_size=16, augment=False)
    data = build_search_data(cfg, torch.device("cpu"))
    train_rows = {tuple(r.tolist()) for r in data.train.x.flatten(1)}
    held_rows = {tuple(r.tolist()) for r in data.arch.x.flatten(1)}
    assert train_rows and held_rows and not train_rows & held_rows

    def to_rows(x, loader):  # undo normalisation back to the stored uint8 rows
        return {tuple(r) for r in (x * loader.std + loader.mean).round().to(torch.uint8).flatten(1).tolist()}

    torch.manual_seed(0)
    m = NB201Supernet(channels=2, cells=1, num_classes=10, in_channels=1)
    w_opt, a_opt = opts(m)
    seen = []
    m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    s = FirstOrder(m, m, w_opt, a_opt)
    cyc = Cycle(data.arch)
    for k, (x, y) in enumerate(data.train.epoch(0)):
        s.step(x, y, cyc.__next__)
        if k == 2:
            break
    assert len(seen) == 6  # α forward then w forward, per step
    for i, x in enumerate(seen):
        rows = to_rows(x, data.train)
        assert rows <= (held_rows if i % 2 == 0 else train_rows)


def test_arch_data_train_draws_a_different_training_batch():
    cfg = SearchConfig(optim="bilevel", arch_data="train", train_samples=200, batch_size=16, augment=False)
    data = build_search_data(cfg, torch.device("cpu"))
    assert data.arch.num_samples == data.train.num_samples == 200
    xa, _ = next(Cycle(data.arch))
    xt, _ = data.train.batch(0, 0)
    assert not torch.equal(xa, xt)


def exact_hypergradient(m, w_opt, xt, yt, xv, yv):
    """d/dα L_val(w − η(μm + ∇w L_train(w, α) + λw), α) by double backward."""
    group = w_opt.param_groups[0]
    eta, mom, wd = group["lr"], group["momentum"], group["weight_decay"]
    names = [n for n, _ in m.named_weights()]
    ws = m.weights()
    alphas = m.alphas()
    loss_t = nn.functional.cross_entropy(m(xt), yt)
    g = torch.autograd.grad(loss_t, ws, create_graph=True)
    unrolled = []
    for p, gp in zip(ws, g):
        buf = w_opt.state.get(p, {}).get("momentum_buffer")
        d = gp + wd * p
        if buf is not None:
            d = d + mom * buf
        unrolled.append(p - eta * d)
    params = dict(zip(names, unrolled))
    params["arch.cell"] = alphas[0]
    loss_v = nn.functional.cross_entropy(functional_call(m, params, (xv,)), yv)
    return torch.autograd.grad(loss_v, alphas)


@pytest.mark.parametrize("with_momentum", [False, True])
def test_second_order_hypergradient_matches_double_backward(with_momentum):
    torch.set_default_dtype(torch.float64)
    try:
        # the exact side needs double backward, which the fused cell's lean BN does not offer; the fused
        # cell's first-order gradients equal the reference's (test_equivalence), so this covers both
        m = tiny_model(torch.float64, impl="reference")
        w_opt, a_opt = opts(m, lr=0.05)
        xt, yt = batch(dtype=torch.float64, seed=1)
        xv, yv = batch(dtype=torch.float64, seed=2)
        if with_momentum:  # fill the momentum buffers with one real step
            SingleLevel(m, m, w_opt, a_opt, grad_clip=0).step(*batch(dtype=torch.float64, seed=3))
        # DARTS uses r=1e-2; this tiny 2-channel net is so curved that the central difference needs a
        # smaller step to agree to 1e-4 (in float64), which is what tests the formula and its signs.
        s = SecondOrder(m, m, w_opt, a_opt, unroll_r=1e-4)
        got = s.hypergradient(xt, yt, xv, yv)[0]
        want = exact_hypergradient(m, w_opt, xt, yt, xv, yv)[0]
        first_order = torch.autograd.grad(nn.functional.cross_entropy(m(xv), yv), m.alphas())[0]
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
        # the unrolled correction is not negligible here, so the test would catch a first-order stand-in
        assert (want - first_order).abs().max() > 1e-4
    finally:
        torch.set_default_dtype(torch.float32)


def test_second_order_hypergradient_restores_weights_and_buffers():
    # The finite-difference perturbation (w ± R·v) must be undone before the weight step runs.
    torch.manual_seed(0)
    m = NB201Supernet(channels=2, cells=1, num_classes=3, in_channels=1).double()
    w_opt, a_opt = opts(m)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    xt, yt = batch(dtype=torch.float64)
    xv, yv = batch(dtype=torch.float64, seed=5)
    SecondOrder(m, m, w_opt, a_opt).hypergradient(xt, yt, xv, yv)
    for k, v in m.state_dict().items():
        if "running" in k or "num_batches" in k:
            continue  # the train-batch forwards update BN statistics, as in DARTS
        assert torch.allclose(v, before[k], rtol=0, atol=1e-12), k
