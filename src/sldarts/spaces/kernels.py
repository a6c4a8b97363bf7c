"""Autograd functions of the fused supernet cells: PyTorch's values, less memory or time for backward.

- :func:`lean_batch_norm`: a supernet multiplies every op's BN output x̂ by its α weight, and that
  product saves x̂ for α's gradient. ``nn.BatchNorm2d`` saves its *input* z as well, but a non-affine
  BN's input gradient needs only x̂: dz = invstd · (g − mean(g) − x̂ · mean(g · x̂)), per-channel means.
  So it saves x̂ alone: one activation fewer per op, the largest memory item of a search step.
- :func:`separable_conv`: DARTS's depthwise → 1×1 conv pair (optionally after BN → ReLU) saves only
  its input (the ReLU of a state, which every op on the state shares, or x̂) and recomputes the cheap
  depthwise output in backward: per separable conv one kept tensor instead of three or four.
  On CPU, PyTorch's depthwise input gradient for 5×5 or dilated kernels is 3-10x slower than the
  equivalent forward convolution with the flipped kernel (same padding, stride 1), which this runs.

The reference cells keep PyTorch's modules; ``tests/test_kernels.py`` checks values and gradients
against them. These backwards are not themselves differentiable (no double backward).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

_conv_backward = torch.ops.aten.convolution_backward
_bn_backward_kernel = torch.ops.aten.native_batch_norm_backward


def _bn_state(bn: nn.BatchNorm2d) -> tuple[bool, float]:
    """What ``nn.BatchNorm2d.forward`` does before normalising: count the batch, pick the momentum."""
    if bn.affine:
        raise ValueError("the lean batch norm needs a non-affine BatchNorm2d")
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    return bn.training or bn.running_mean is None, momentum


def _normalise(z: Tensor, rm: Tensor | None, rv: Tensor | None, batch_stats: bool, momentum: float,
               eps: float) -> tuple[Tensor, Tensor]:
    out, _, invstd = torch.native_batch_norm(z, None, None, rm, rv, batch_stats, momentum, eps)
    if not batch_stats:  # normalised by the running statistics, constants here
        invstd = torch.rsqrt(rv + eps)
    return out, invstd


def _normalise_backward(g: Tensor, xhat: Tensor, invstd: Tensor, batch_stats: bool) -> Tensor:
    if not batch_stats:
        return g * invstd.view(1, -1, 1, 1).to(g.dtype)
    # PyTorch's BN backward with input x̂, mean 0, invstd 1 and weight invstd is exactly dz.
    return _bn_backward_kernel(g, xhat, invstd, None, None, torch.zeros_like(invstd), torch.ones_like(invstd),
                               True, 0.0, [True, False, False])[0]


def _depthwise_backward(g: Tensor, x: Tensor, w: Tensor, conf: tuple, need_w: bool) -> tuple[Tensor, Tensor | None]:
    stride, padding, dilation = conf
    k, groups = w.shape[-1], w.shape[0]
    # stride 1, "same" padding, on CPU: the input gradient is the forward conv with the flipped kernel
    flipped = x.device.type == "cpu" and stride == 1 and 2 * padding == dilation * (k - 1) and w.shape[-2] == k
    gx = gw = None
    if need_w or not flipped:
        gx, gw, _ = _conv_backward(g, x, w, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0],
                                   groups, [not flipped, need_w, False])
    if flipped:
        gx = F.conv2d(g, w.flip(-1, -2), None, 1, padding, dilation, groups)
    return gx, gw


def _will_use(ctx, i: int) -> bool:
    """Whether the running backward uses input i's gradient: ``autograd.grad(loss, alphas)`` (the α step
    of bi-level search) needs no weight gradients, and PyTorch's own ops skip them too."""
    if not ctx.needs_input_grad[i]:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(ctx.next_functions[i][0]))
    except (AttributeError, RuntimeError):  # private API moved or not in a backward: compute it
        return True


def _depthwise_conf(conv: nn.Conv2d) -> tuple[int, int, int]:
    if conv.groups != conv.in_channels or conv.out_channels != conv.in_channels or conv.bias is not None:
        raise ValueError("expected a depthwise Conv2d without bias")
    (s, _), (p, _), (d, _) = conv.stride, conv.padding, conv.dilation
    return int(s), int(p), int(d)


class _LeanBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, rm, rv, batch_stats, momentum, eps):
        out, invstd = _normalise(z, rm, rv, batch_stats, momentum, eps)
        ctx.batch_stats = batch_stats
        ctx.save_for_backward(out, invstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        out, invstd = ctx.saved_tensors
        return _normalise_backward(g, out, invstd, ctx.batch_stats), None, None, None, None, None


class _Separable(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w_dw, w_pw, conf, rm, rv, batch_stats, momentum, eps):
        s, p, d, pre = conf
        invstd = None
        if pre:  # the input is z and the block starts with BN -> ReLU
            x, invstd = _normalise(x, rm, rv, batch_stats, momentum, eps)
        ctx.conf, ctx.batch_stats = conf, batch_stats
        ctx.save_for_backward(x, w_dw, w_pw, invstd)
        a = torch.relu(x) if pre else x
        return F.conv2d(F.conv2d(a, w_dw, None, s, p, d, w_dw.shape[0]), w_pw)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, w_dw, w_pw, invstd = ctx.saved_tensors
        s, p, d, pre = ctx.conf
        # under autocast the forward convolved in g's dtype; backward runs outside autocast, so cast here
        a = (torch.relu(x) if pre else x).to(g.dtype)
        w_dw, w_pw = w_dw.to(g.dtype), w_pw.to(g.dtype)
        h = F.conv2d(a, w_dw, None, s, p, d, w_dw.shape[0])  # recomputed: cheaper than keeping it
        gh, gw_pw, _ = _conv_backward(g, h, w_pw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                      [True, _will_use(ctx, 2), False])
        del h
        ga, gw_dw = _depthwise_backward(gh, a, w_dw, (s, p, d), _will_use(ctx, 1))
        if pre:  # ReLU's backward, then BN's
            ga = _normalise_backward(torch.ops.aten.threshold_backward(ga, x, 0), x, invstd, ctx.batch_stats)
        return ga, gw_dw, gw_pw, None, None, None, None, None, None


def lean_batch_norm(bn: nn.BatchNorm2d, z: Tensor) -> Tensor:
    """``bn(z)`` for a non-affine ``bn`` (same output, same running-statistics update), saving only x̂."""
    batch_stats, momentum = _bn_state(bn)
    return _LeanBatchNorm.apply(z, bn.running_mean, bn.running_var, batch_stats, momentum, bn.eps)


def separable_conv(dw: nn.Conv2d, pw: nn.Conv2d, x: Tensor, pre_bn: nn.BatchNorm2d | None = None) -> Tensor:
    """``pw(dw(x))``, or ``pw(dw(relu(pre_bn(x))))`` with a non-affine ``pre_bn``, for a depthwise ``dw``
    and a 1×1 ``pw`` (no biases). Saves only x (or x̂) and recomputes the depthwise output in backward."""
    if pw.groups != 1 or pw.kernel_size != (1, 1) or pw.bias is not None:
        raise ValueError("expected a 1x1 Conv2d without bias")
    conf = (*_depthwise_conf(dw), pre_bn is not None)
    if pre_bn is None:
        stride, padding, dilation, _ = conf
        if stride == dilation == 2 and padding % 2 == 0:
            # a stride-2, dilation-2 conv reads only the even rows and columns: it is the dilation-1 conv
            # of that quarter-size sample (4x less work, and the fast stride-1 kernels)
            x, conf = x[:, :, ::2, ::2], (1, padding // 2, 1, False)
        return _Separable.apply(x, dw.weight, pw.weight, conf, None, None, False, 0.0, 0.0)
    batch_stats, momentum = _bn_state(pre_bn)
    return _Separable.apply(x, dw.weight, pw.weight, conf, pre_bn.running_mean, pre_bn.running_var, batch_stats,
                            momentum, pre_bn.eps)
