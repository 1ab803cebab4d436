"""Receptive fields: atrous geometry, a layer walk, and a gradient probe of the real network.

The walk adds (k - 1) * dilation * jump per layer of a chain (jump = product of earlier strides).
The probe checks it on the network itself: with every conv weight a positive constant, zero
biases, a constant positive input and max-pools swapped for average pools of the same geometry
(a max-pool can route the gradient through any pixel of its window, an average pool routes it
through all of them), every path is live, so the input pixels with a non-zero gradient of the
centre logit are exactly the receptive field. Float64 keeps far-away contributions above zero.
"""

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

WINDOWED = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
POINTWISE = (nn.ReLU, nn.Dropout, nn.Identity)


def effective_kernel(kernel_size: int, rate: int) -> int:
    """k_e = k + (k - 1)(r - 1): the span of a k-tap filter with r - 1 holes between taps."""
    return kernel_size + (kernel_size - 1) * (rate - 1)


def paper_fov(kernel_size: int, rate: int, stride: int = 8, cell: int = 32) -> int:
    """Table 1's FOV column (paper.md §1): fc6's tap span at stride 8 plus one stride-32 cell."""
    return stride * rate * (kernel_size - 1) + cell


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, tuple | list) else (value, value)


def _check_supported(model: nn.Module, caller: str) -> None:
    """Both methods know conv, pool, ReLU and dropout layers (all of DeepLab on VGG-16)."""
    for name, m in model.named_modules():
        if not list(m.children()) and not isinstance(m, WINDOWED + POINTWISE):
            raise ValueError(
                f"{caller}: no receptive-field rule for {name or 'the model'} "
                f"({type(m).__name__}); it handles conv, pool, ReLU and dropout layers only"
            )


def chain_receptive_field(layers: Iterable[nn.Module]) -> tuple[int, int]:
    """(receptive field, jump) along one axis of layers applied one after another.

    `layers` may be whole modules: their sub-modules are walked in registration order, which is
    the forward order for plain chains (VGG stages, one head branch) but not for networks with
    skip or parallel paths; walk one path at a time there.
    """
    size, jump = 1, 1
    for layer in layers:
        _check_supported(layer, "chain_receptive_field")
        for m in layer.modules():
            if isinstance(m, WINDOWED):
                k = _pair(m.kernel_size)[0]
                d = _pair(getattr(m, "dilation", 1))[0]
                size += (k - 1) * d * jump
                jump *= _pair(m.stride)[0]
    return size, jump


@dataclass
class ProbedField:
    """Where the centre logit's gradient is non-zero in the input (inclusive pixel bounds)."""

    gradient: np.ndarray  # (H, W) |d logit / d input| summed over the RGB channels
    top: int
    bottom: int
    left: int
    right: int
    logit_pixel: tuple[int, int]  # input pixel at the probed logit's stride-8 position

    @property
    def size(self) -> tuple[int, int]:
        return self.bottom - self.top + 1, self.right - self.left + 1


def _linear_probe(model: nn.Module) -> nn.Module:
    """A float64 copy where every path carries gradient (see the module docstring)."""
    _check_supported(model, "gradient_receptive_field")
    probe = copy.deepcopy(model).double().eval()
    for name, m in list(probe.named_modules()):
        if isinstance(m, nn.MaxPool2d):
            pool = nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)
            parent, _, child = name.rpartition(".")
            setattr(probe.get_submodule(parent), child, pool)
        elif isinstance(m, nn.Conv2d):
            with torch.no_grad():
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    return probe


def gradient_receptive_field(
    model: nn.Module, input_size: int, output_stride: int = 8
) -> ProbedField:
    """Measure the receptive field of the centre logit of `model` on an input_size^2 image.

    Use a narrow network (`width_mult`) to keep it fast: the width does not change the field.
    Raises ValueError when the field reaches the image border (the input is too small to see it
    whole).
    """
    probe = _linear_probe(model)
    x = torch.ones(1, 3, input_size, input_size, dtype=torch.float64, requires_grad=True)
    logits = probe(x)
    h, w = logits.shape[-2:]
    cy, cx = h // 2, w // 2
    logits[0, 0, cy, cx].backward()
    grad = x.grad[0].abs().sum(0).numpy()
    rows, cols = np.nonzero(grad.any(1))[0], np.nonzero(grad.any(0))[0]
    if rows.size == 0:
        raise ValueError("gradient_receptive_field: the centre logit does not depend on the input")
    top, bottom, left, right = rows[0], rows[-1], cols[0], cols[-1]
    if top == 0 or left == 0 or bottom == input_size - 1 or right == input_size - 1:
        raise ValueError(
            f"gradient_receptive_field: the field reaches the border of a {input_size}px input; "
            "use a larger input_size"
        )
    return ProbedField(
        grad, int(top), int(bottom), int(left), int(right), (cy * output_stride, cx * output_stride)
    )
