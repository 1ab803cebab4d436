"""Multi-scale input (MSC): one weight-shared network on several input scales, max-fused."""

from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.runtime.config_checks import invalid_value, msc_scales


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    # Caffe's Interp layer, which the paper's prototxt uses, aligns corners.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def interp_size(n: int, scale: float) -> int:
    """Caffe's Interp output size for `scale` = zoom / shrink: shrink first, then zoom.

    shrink s: (n - 1) // s + 1; zoom z: m + (m - 1)(z - 1). So 321 -> 241 at 0.75 (shrink 4,
    zoom 3) and 161 at 0.5 (shrink 2); 513 -> 385 and 257.
    """
    ratio = Fraction(scale).limit_denominator(64)
    return (n - 1) // ratio.denominator * ratio.numerator + 1


class MSC(nn.Module):
    """Runs `net` on the input at each scale and fuses the logits by element-wise max.

    A scale s resizes an H x W input bilinearly (corners aligned) to Caffe's Interp size
    (`interp_size`). The other scales' logits are resized to the scale-1 logit size (stride 8)
    before the max. Eval returns the fused logits only. Training returns `[fused, *per-scale
    logits]` in the order of `scales`, each for its own loss, as the ResNet train prototxt has
    them: a scale whose logits sit on a sub-grid of the labels (1/s a whole number: 0.5 scores
    every 16th label pixel) keeps its own size; any other (0.75: Interp zoom 4 shrink 3, 31 -> 41)
    is trained on its logits resized to the scale-1 size.
    """

    def __init__(self, net: nn.Module, scales: tuple[float, ...] = (1.0, 0.75, 0.5)):
        super().__init__()
        if not msc_scales(list(scales)):
            expected = "factors > 0 including 1.0, e.g. model.msc_scales=[1.0,0.75,0.5]"
            raise invalid_value("model.msc_scales", scales, expected)
        scales = tuple(float(s) for s in scales)
        self.net = net
        self.scales = scales

    def classifier_parameters(self) -> list[nn.Parameter]:
        return self.net.classifier_parameters()

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        h, w = x.shape[-2:]
        logits = []
        for s in self.scales:
            xs = x if s == 1.0 else _resize(x, (interp_size(h, s), interp_size(w, s)))
            logits.append(self.net(xs))
        size = logits[self.scales.index(1.0)].shape[-2:]
        resized = [y if y.shape[-2:] == size else _resize(y, size) for y in logits]
        fused = torch.stack(resized).amax(0)
        if not self.training:
            return fused
        on_grid = [(1 / s).is_integer() for s in self.scales]
        per_scale = [y if keep else r for y, r, keep in zip(logits, resized, on_grid, strict=True)]
        return [fused, *per_scale]
