"""Multi-scale input (MSC): one weight-shared network on several input scales, max-fused."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.errors import UserError


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    # Caffe's Interp layer, which the paper's prototxt uses, aligns corners.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class MSC(nn.Module):
    """Runs `net` on the input at each scale and fuses the logits by element-wise max.

    A scale s resizes an H x W input bilinearly to (H - 1) * s + 1 (Caffe's Interp sizes:
    321 -> 241 at 0.75, 161 at 0.5). The other scales' logits are resized to the scale-1 logit
    size (stride 8) before the max. Training returns `[fused, *per-scale logits]` in the order of
    `scales` (the loss uses all of them); eval returns the fused logits only.
    """

    def __init__(self, net: nn.Module, scales: tuple[float, ...] = (1.0, 0.75, 0.5)):
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if 1.0 not in scales or min(scales) <= 0:
            raise UserError(f"model.msc_scales must be positive and include 1.0 (got {scales})")
        self.net = net
        self.scales = scales

    def classifier_parameters(self) -> list[nn.Parameter]:
        return self.net.classifier_parameters()

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        h, w = x.shape[-2:]
        logits = []
        for s in self.scales:
            xs = x if s == 1.0 else _resize(x, (int((h - 1) * s) + 1, int((w - 1) * s) + 1))
            logits.append(self.net(xs))
        size = logits[self.scales.index(1.0)].shape[-2:]
        fused = torch.stack([y if y.shape[-2:] == size else _resize(y, size) for y in logits])
        fused = fused.amax(0)
        return [fused, *logits] if self.training else fused
