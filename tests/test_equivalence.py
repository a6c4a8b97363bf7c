"""The fused NB201 supernet computes the same function as the plain per-edge, per-op reference."""

import pytest
import torch

from sldarts.spaces.nb201 import FusedSearchCell, NB201Supernet


def pair(seed=0, **kw):
    torch.manual_seed(seed)
    ref = NB201Supernet(impl="reference", **kw)
    fused = NB201Supernet(impl="fused", **kw)
    fused.load_state_dict({k: v for k, v in ref.state_dict().items() if ".edges." not in k}, strict=False)
    for a, b in zip(fused.layers, ref.layers):
        if isinstance(a, FusedSearchCell):
            a.load_reference(b)
    with torch.no_grad():
        ref.arch["cell"].normal_(0, 1)
        fused.arch["cell"].copy_(ref.arch["cell"])
    return ref, fused


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def run_both(models, train, batch, grads_of, channels_last=False):
    """Forward + backward of each model on the same batch: (outputs, [grads_of(model) ...]).
    ``channels_last`` runs the second (fused) model and its batch in NHWC, as searches do."""
    x = torch.randn(batch, 3, 16, 16)
    y = torch.randint(0, 10, (batch,))
    outs, grads = [], []
    for k, m in enumerate(models):
        m.train(train)
        xm = x
        if channels_last and k == 1:
            m.to(memory_format=torch.channels_last)
            xm = x.contiguous(memory_format=torch.channels_last)
        out = m(xm)
        torch.nn.functional.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append([g.clone() for g in grads_of(m)])
    return outs, grads


@pytest.mark.parametrize("train,channels_last", [(True, False), (False, False), (True, True)])
def test_fused_matches_reference_outputs_and_gradients(train, channels_last):
    ref, fused = pair(channels=4, cells=2, num_classes=10)
    outs, grads = run_both((ref, fused), train, 8, lambda m: [m.arch["cell"].grad], channels_last)
    assert rel(outs[1], outs[0]) < 1e-5
    assert rel(grads[1][0], grads[0][0]) < 1e-5
    # weight gradients: the fused stem and classifier see the same upstream gradient
    assert rel(fused.stem[0].weight.grad, ref.stem[0].weight.grad) < 1e-5
    assert rel(fused.classifier.weight.grad, ref.classifier.weight.grad) < 1e-5


def test_fused_running_statistics_match():
    ref, fused = pair(channels=3, cells=1)
    x = torch.randn(6, 3, 8, 8)
    ref(x)
    fused(x)
    cell_f = next(m for m in fused.layers if isinstance(m, FusedSearchCell))
    cell_r = next(m for m in ref.layers if not isinstance(m, FusedSearchCell))
    bn_ref = cell_r.edges[0].ops[3][2]  # edge 1<-0, nor_conv_3x3's BN
    assert torch.allclose(cell_f.bn3[0].running_mean[:3], bn_ref.running_mean, atol=1e-6)


@pytest.mark.parametrize("train,channels_last", [(True, False), (False, False), (True, True)])
def test_fused_darts_cell_matches_reference(train, channels_last):
    ref, fused = darts_pair()
    grads_of = lambda m: [a.grad for a in m.alphas()] + [p.grad for p in m.weights()]  # noqa: E731
    outs, grads = run_both((ref, fused), train, 6, grads_of, channels_last)
    assert rel(outs[1], outs[0]) < 1e-5
    for g_f, g_r in zip(grads[1], grads[0]):
        assert rel(g_f, g_r) < 1e-5
    for (k, a), b in zip(ref.state_dict().items(), fused.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k  # BN statistics kept in step


def darts_pair(seed=0):
    from sldarts.spaces.darts import DartsSupernet

    torch.manual_seed(seed)
    ref = DartsSupernet(channels=4, layers=3, impl="reference")
    fused = DartsSupernet(channels=4, layers=3, impl="fused")
    fused.load_state_dict(ref.state_dict())  # the same modules: only the forward differs
    with torch.no_grad():
        for a, b in zip(ref.alphas(), fused.alphas()):
            a.normal_(0, 1)
            b.copy_(a)
    return ref, fused


@pytest.mark.parametrize("space", ["nb201", "darts"])
def test_fused_cells_under_bf16_autocast(space):
    # amp=bf16: the fused kernels' backwards get bf16 gradients and float32 weights, outside autocast
    ref, fused = pair(channels=4, cells=2) if space == "nb201" else darts_pair()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    grads = []
    for m in (ref, fused):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        grads.append(torch.cat([a.grad.flatten() for a in m.alphas()]))
    assert grads[1].dtype == torch.float32 and torch.isfinite(grads[1]).all()
    assert rel(grads[1], grads[0]) < 0.05  # bf16 rounding in different orders, not a different function
