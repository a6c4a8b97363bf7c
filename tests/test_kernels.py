"""The fused cells' autograd kernels give PyTorch's values and gradients (float64, against autograd)."""

import copy
import itertools

import pytest
import torch
from torch import nn

from sldarts.spaces.kernels import lean_batch_norm, separable_conv

DT = torch.float64


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_bn(c, train, track, momentum):
    bn = nn.BatchNorm2d(c, affine=False, track_running_stats=track, momentum=momentum).to(DT)
    if track:
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
    return bn.train(train)


def inputs(shape, channels_last, seed=0):
    torch.manual_seed(seed)
    z = torch.randn(*shape, dtype=DT) * 2 + 0.3
    if channels_last:
        z = z.contiguous(memory_format=torch.channels_last)
    return z.clone().requires_grad_(), z.clone().requires_grad_()


@pytest.mark.parametrize("train,track,momentum,channels_last",
                         list(itertools.product([True, False], [True, False], [0.1, None], [False, True])))
def test_lean_batch_norm_matches_batchnorm2d(train, track, momentum, channels_last):
    bn = make_bn(5, train, track, momentum)
    twin = copy.deepcopy(bn)
    z_ref, z_lean = inputs((4, 5, 6, 7), channels_last)
    w = torch.randn(4, 5, 6, 7, dtype=DT)
    for _ in range(2):  # twice: the running statistics and the batch counter must move the same way
        y_ref, y_lean = bn(z_ref), lean_batch_norm(twin, z_lean)
    (y_ref * w).sum().backward()
    (y_lean * w).sum().backward()
    assert torch.equal(y_lean, y_ref)
    assert rel(z_lean.grad, z_ref.grad) < 1e-10
    for (k, a), b in zip(bn.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("kernel,dilation,stride",
                         [(3, 1, 1), (5, 1, 1), (3, 2, 1), (5, 2, 1), (3, 1, 2), (3, 2, 2), (5, 2, 2)])
@pytest.mark.parametrize("pre,train,channels_last", [(False, True, False), (True, True, True), (True, False, False),
                                                      (False, True, True)])
def test_separable_conv_matches_modules(kernel, dilation, stride, pre, train, channels_last):
    c, pad = 4, dilation * (kernel - 1) // 2
    torch.manual_seed(1)
    dw = nn.Conv2d(c, c, kernel, stride, pad, dilation=dilation, groups=c, bias=False).to(DT)
    pw = nn.Conv2d(c, 6, 1, bias=False).to(DT)
    bn = make_bn(c, train, True, 0.1) if pre else None
    mods = nn.ModuleList([dw, pw] + ([bn] if pre else []))
    twin = copy.deepcopy(mods)
    x_ref, x_fast = inputs((3, c, 9, 9), channels_last, seed=2)
    y_ref = pw(dw(torch.relu(bn(x_ref)) if pre else x_ref))
    y_fast = separable_conv(twin[0], twin[1], x_fast, pre_bn=twin[2] if pre else None)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_fast.backward(g)
    assert rel(y_fast, y_ref) < 1e-12
    assert rel(x_fast.grad, x_ref.grad) < 1e-10
    for a, b in zip(mods.parameters(), twin.parameters()):
        assert rel(b.grad, a.grad) < 1e-10
    for a, b in zip(mods.buffers(), twin.buffers()):
        assert torch.equal(a, b)


def test_kernels_refuse_what_they_do_not_compute():
    with pytest.raises(ValueError, match="non-affine"):
        lean_batch_norm(nn.BatchNorm2d(3), torch.randn(2, 3, 4, 4))
    dense = nn.Conv2d(3, 3, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match="depthwise"):
        separable_conv(dense, nn.Conv2d(3, 3, 1, bias=False), torch.randn(2, 3, 4, 4))


def test_separable_conv_skips_weight_gradients_nobody_asked_for(monkeypatch):
    # the α step of bi-level search takes autograd.grad(loss, alphas): no weight-gradient kernels
    import sldarts.spaces.kernels as k

    masks = []
    real = k._conv_backward
    monkeypatch.setattr(k, "_conv_backward", lambda *a: masks.append(a[-1][1]) or real(*a))
    dw = nn.Conv2d(3, 3, 3, stride=2, padding=1, groups=3, bias=False)  # stride 2: the native path
    pw = nn.Conv2d(3, 3, 1, bias=False)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    (gx,) = torch.autograd.grad(separable_conv(dw, pw, x).square().sum(), [x])
    (gx_ref,) = torch.autograd.grad(pw(dw(x)).square().sum(), [x])
    assert rel(gx, gx_ref) < 1e-5 and masks == [False, False]
    separable_conv(dw, pw, x).square().sum().backward()  # a full backward computes both
    assert masks[2:] == [True, True] and dw.weight.grad is not None and pw.weight.grad is not None
