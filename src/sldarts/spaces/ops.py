"""Primitive operations shared by the NAS-Bench-201 and DARTS spaces, as their reference code defines them."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sldarts.mixing import Zero

# Ops that have no weights: the paper's "non-learnable" ops whose share we watch.
PARAM_FREE = frozenset({"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3"})


def bn(c: int, affine: bool, track: bool = True) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, affine=affine, track_running_stats=track)


class ReLUConvBN(nn.Sequential):
    """ReLU -> Conv -> BN. NB201 gives the conv a bias exactly when the BN is not affine."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        padding: int,
        affine: bool,
        track: bool = True,
        bias: bool = False,
        dilation: int = 1,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation=dilation, bias=bias),
            bn(c_out, affine, track),
        )


class DilConv(nn.Sequential):
    """DARTS dilated depthwise-separable conv: ReLU, depthwise dilated conv, 1x1 conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, dilation: int,
                 affine: bool, track: bool = True) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            bn(c_out, affine, track),
        )


class SepConv(nn.Sequential):
    """DARTS separable conv: two stacked DilConv blocks of dilation 1, the first one carrying the stride."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool,
                 track: bool = True) -> None:
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine, track),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine, track),
        )


class FactorizedReduce(nn.Module):
    """Halve the resolution with two offset stride-2 1x1 convs, concatenated (DARTS).

    Written as stride-2 sampling followed by stride-1 1x1 convs: the same function and parameters, but
    PyTorch 2.13's CPU channels-last kernel for *strided* 1x1 convs corrupts memory in backward when the
    input has fewer than 16 channels (a crash at 56x56 inputs).
    """

    def __init__(self, c_in: int, c_out: int, affine: bool, track: bool = True) -> None:
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out - c_out // 2, 1, bias=False)
        self.bn = bn(c_out, affine, track)

    def convs(self, r: Tensor) -> Tensor:
        """Both halves, before the BN, on an input that is already ReLU-ed."""
        # odd sizes: pad the shifted view so both halves have the same ceil(H/2) x ceil(W/2) size
        y = nn.functional.pad(r[:, :, 1:, 1:], (0, r.shape[-1] % 2, 0, r.shape[-2] % 2))
        return torch.cat([self.conv_1(r[:, :, ::2, ::2]), self.conv_2(y[:, :, ::2, ::2])], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.convs(self.relu(x)))


def avg_pool(stride: int) -> nn.AvgPool2d:
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


OpFactory = Callable[[int, int, bool, bool], nn.Module]

# DARTS ops: factory(C, stride, affine, track)
DARTS_OPS: dict[str, OpFactory] = {
    "none": lambda c, s, a, t: Zero(s),
    "max_pool_3x3": lambda c, s, a, t: nn.MaxPool2d(3, stride=s, padding=1),
    "avg_pool_3x3": lambda c, s, a, t: avg_pool(s),
    "skip_connect": lambda c, s, a, t: nn.Identity() if s == 1 else FactorizedReduce(c, c, a, t),
    "sep_conv_3x3": lambda c, s, a, t: SepConv(c, c, 3, s, 1, a, t),
    "sep_conv_5x5": lambda c, s, a, t: SepConv(c, c, 5, s, 2, a, t),
    "dil_conv_3x3": lambda c, s, a, t: DilConv(c, c, 3, s, 2, 2, a, t),
    "dil_conv_5x5": lambda c, s, a, t: DilConv(c, c, 5, s, 4, 2, a, t),
}

# NAS-Bench-201 ops (stride 1 inside cells): factory(C, stride, affine, track)
NB201_OPS: dict[str, OpFactory] = {
    "none": lambda c, s, a, t: Zero(s),
    "skip_connect": lambda c, s, a, t: nn.Identity(),
    "nor_conv_1x1": lambda c, s, a, t: ReLUConvBN(c, c, 1, s, 0, a, t, bias=not a),
    "nor_conv_3x3": lambda c, s, a, t: ReLUConvBN(c, c, 3, s, 1, a, t, bias=not a),
    "avg_pool_3x3": lambda c, s, a, t: avg_pool(s),
}


class ResNetBasicBlock(nn.Module):
    """NB201's reduction between stages: two ReLU-Conv-BN (first stride 2) plus avgpool+1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2) -> None:
        super().__init__()
        self.conv_a = ReLUConvBN(c_in, c_out, 3, stride, 1, affine=True)
        self.conv_b = ReLUConvBN(c_out, c_out, 3, 1, 1, affine=True)
        self.downsample = nn.Sequential(
            nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
            nn.Conv2d(c_in, c_out, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(x) + self.conv_b(self.conv_a(x))
