"""Learnable upsampling of score maps for FCN: bilinear transposed conv or resize-convolution.

Both kinds map an n-sample axis to (n + 1) * factor samples on the same grid as Caffe's
`Deconvolution(kernel=2 * factor, stride=factor, pad=0)`: output j sits at input coordinate
(j + 0.5) / factor - 1. So FCN's crop offsets are the same whichever kind is chosen.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.runtime.errors import UserError

UPSAMPLING = ("transposed", "resize_conv")


def bilinear_kernel(size: int) -> Tensor:
    """A size x size bilinear interpolation filter (FCN's `surgery.upsample_filt`)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 else factor - 0.5
    ramp = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return ramp[:, None] * ramp[None, :]


class BilinearTransposed(nn.ConvTranspose2d):
    """FCN's upscore layers: a bias-free transposed conv, kernel 2f, stride f, initialised to
    bilinear interpolation of each channel on its own (identity across channels). `learn=False`
    freezes it (reference code, lr_mult 0); the weights still count as parameters."""

    def __init__(self, channels: int, factor: int, learn: bool = False):
        super().__init__(channels, channels, 2 * factor, stride=factor, bias=False)
        self.weight.requires_grad_(learn)

    def reset_parameters(self) -> None:  # called by ConvTranspose2d.__init__
        with torch.no_grad():
            self.weight.zero_()
            kernel = bilinear_kernel(self.kernel_size[0])
            for c in range(self.in_channels):
                self.weight[c, c] = kernel


class ResizeConv(nn.Module):
    """Resize-convolution (Odena et al. 2016): fixed bilinear resize, then a learned 3x3 conv.

    The resize never overlaps kernels unevenly, so it cannot make checkerboard artifacts. The
    map is resized by `factor` and edge-padded by factor / 2 per side, which puts it on the
    transposed conv's grid (module docstring). The conv starts as the identity, so an untrained
    ResizeConv equals a bilinear transposed conv away from the borders.
    """

    def __init__(self, channels: int, factor: int):
        super().__init__()
        if factor % 2:
            raise ValueError(f"resize-convolution needs an even upsampling factor, got {factor}")
        self.factor = factor
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        nn.init.dirac_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)
        return self.conv(F.pad(x, [self.factor // 2] * 4, mode="replicate"))


def make_upsampler(kind: str, channels: int, factor: int, learn: bool) -> nn.Module:
    """`kind` from model.upsampling; `learn` only applies to the transposed conv."""
    if kind == "transposed":
        return BilinearTransposed(channels, factor, learn)
    if kind == "resize_conv":
        return ResizeConv(channels, factor)
    raise UserError(f"model.upsampling={kind!r} is unknown; use one of {UPSAMPLING}")
