"""The one atrous (dilated) convolution every network here uses.

All dilated convolutions of the backbones and heads are built by `AtrousConv2d`, so a faster
implementation (for example space-to-batch on CPU) can be switched in at this single place.
"""

import torch.nn.functional as F
from torch import Tensor, nn


class AtrousConv2d(nn.Conv2d):
    """A k x k convolution with dilation `rate` that keeps the spatial size at stride 1.

    The effective kernel spans rate * (k - 1) + 1 pixels, so the total padding per axis is
    rate * (k - 1). It is split floor / ceil: floor before (top, left), ceil after (bottom, right).
    For odd kernels, and for even kernels at even rates (the paper's 4x4 at rates 4 and 8: pads
    6 and 12 per side), the split is symmetric and the convolution pads itself; otherwise the one
    extra row and column go on the bottom / right via `F.pad`. An explicit `padding` overrides
    this (FCN's conv1_1 pads 100).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        rate: int = 1,
        stride: int = 1,
        bias: bool = True,
        padding: int | None = None,
    ):
        total = rate * (kernel_size - 1)
        before, after = (total // 2, total - total // 2) if padding is None else (padding, padding)
        symmetric = before == after
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=before if symmetric else 0,
            dilation=rate,
            bias=bias,
        )
        self.extra_pad = None if symmetric else (before, after, before, after)

    def forward(self, x: Tensor) -> Tensor:
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return super().forward(x)
