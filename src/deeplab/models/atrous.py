"""The one atrous (dilated) convolution every network here uses, computed either of two ways.

The paper (paper.md §1) names two equivalent ways to compute an atrous convolution at rate r:
"dilation" (the kernel with r - 1 holes between its taps) and "space-to-batch" (split the input
into r x r interleaved sub-maps, run the plain kernel on them as one batch, interleave the
results back). Both give the same numbers; their speed differs per device and layer shape (see
`AUTO_MODE` and docs/speed.md), so every dilated convolution is an `AtrousConv2d`
and `set_atrous_mode` switches all of a model's layers at once.
"""

import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.runtime.config_checks import invalid_value
from deeplab.runtime.errors import UserError

ATROUS_MODES = ("auto", "dilation", "space_to_batch")


def space_to_batch_conv2d(
    x: Tensor, weight: Tensor, bias: Tensor | None, rate: int, before: int, after: int
) -> Tensor:
    """`conv2d(pad(x, before, after), weight, bias, dilation=rate)` via r x r sub-maps.

    Output pixel i reads padded input pixels i, i + r, i + 2r, ...: all pixels of the residue
    class i mod r. So the sub-map x_pad[p::r, q::r] convolved with the undilated kernel gives
    exactly the outputs y[p::r, q::r]. The padded size is rounded up to a multiple of r (extra
    zeros at the bottom / right) so every sub-map has the same size; the surplus output rows and
    columns this adds are cropped.
    """
    b, c, h, w = x.shape
    k_h, k_w = weight.shape[-2:]
    h_pad, w_pad = h + before + after, w + before + after
    out_h, out_w = h_pad - rate * (k_h - 1), w_pad - rate * (k_w - 1)
    if out_h < 1 or out_w < 1:
        raise UserError(
            f"AtrousConv2d: a {h}x{w} input is smaller than the {k_h}x{k_w} kernel at rate {rate} "
            "spans with this padding; feed a larger image"
        )
    sub_h, sub_w = -(-h_pad // rate), -(-w_pad // rate)  # ceil division
    x = F.pad(x, (before, after + sub_w * rate - w_pad, before, after + sub_h * rate - h_pad))
    # (B, C, sub_h * r, sub_w * r) -> (r * r * B, C, sub_h, sub_w), residue classes outermost.
    x = x.reshape(b, c, sub_h, rate, sub_w, rate).permute(3, 5, 0, 1, 2, 4)
    y = F.conv2d(x.reshape(rate * rate * b, c, sub_h, sub_w), weight, bias)
    o, y_h, y_w = y.shape[1:]
    y = y.reshape(rate, rate, b, o, y_h, y_w).permute(2, 3, 4, 0, 5, 1)
    return y.reshape(b, o, y_h * rate, y_w * rate)[:, :, :out_h, :out_w]


# What `mode="auto"` means per device type: the faster way, measured (docs/speed.md,
# experiments/bench_atrous.py). CPU (2-core AVX-512, PyTorch 2.13, oneDNN 3.12): dilation was
# faster for every atrous layer of these networks in training, forward + backward; space-to-batch
# took 1.3x (3x3 at rate 2) to 3.9x (the 4x4 rate-8 fc6) as long, because its sub-maps are
# small (oneDNN runs them less efficiently) and rounding up to a multiple of r adds up to 73%
# more outputs (3x3 rate 18 on a 41 x 41 map: 54 x 54 computed). CUDA: cuDNN runs dilated
# kernels natively; not measured here (no GPU was lent). A device type not listed uses
# dilation. Re-measure on new hardware (bench_atrous.py) and change this table.
AUTO_MODE = {"cpu": "dilation", "cuda": "dilation"}


class AtrousConv2d(nn.Conv2d):
    """A k x k convolution with dilation `rate` that keeps the spatial size at stride 1.

    The effective kernel spans rate * (k - 1) + 1 pixels, so the total padding per axis is
    rate * (k - 1). It is split floor / ceil: floor before (top, left), ceil after (bottom, right).
    For odd kernels, and for even kernels at even rates (the paper's 4x4 at rates 4 and 8: pads
    6 and 12 per side), the split is symmetric and the convolution pads itself; otherwise the one
    extra row and column go on the bottom / right via `F.pad`. An explicit `padding` overrides
    this (FCN's conv1_1 pads 100).

    `mode` picks how a rate > 1, stride 1 layer is computed: "dilation", "space_to_batch", or
    "auto" (the measured faster way on the input's device, `AUTO_MODE`). All modes give the same
    outputs and gradients up to float rounding; weights and state dict do not depend on the mode.
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
        mode: str = "auto",
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
        self.rate, self.pad_before, self.pad_after = rate, before, after
        self.extra_pad = None if symmetric else (before, after, before, after)
        self.mode = check_mode(mode)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mode={self.mode}"

    def uses_space_to_batch(self, x: Tensor) -> bool:
        """Whether `forward(x)` takes the space-to-batch path (only rate > 1 at stride 1 can)."""
        if self.rate == 1 or self.stride != (1, 1):
            return False
        mode = AUTO_MODE.get(x.device.type, "dilation") if self.mode == "auto" else self.mode
        return mode == "space_to_batch"

    def forward(self, x: Tensor) -> Tensor:
        if self.uses_space_to_batch(x):
            return space_to_batch_conv2d(
                x, self.weight, self.bias, self.rate, self.pad_before, self.pad_after
            )
        if self.extra_pad is not None:
            x = F.pad(x, self.extra_pad)
        return super().forward(x)


def check_mode(mode: str) -> str:
    if mode not in ATROUS_MODES:
        expected = f"one of {', '.join(ATROUS_MODES)}, e.g. speed.atrous_mode=auto"
        raise invalid_value("speed.atrous_mode", mode, expected)
    return mode


def set_atrous_mode(model: nn.Module, mode: str) -> int:
    """Sets `mode` on every `AtrousConv2d` inside `model`; returns how many layers it set."""
    check_mode(mode)
    layers = [m for m in model.modules() if isinstance(m, AtrousConv2d)]
    for m in layers:
        m.mode = mode
    return len(layers)
