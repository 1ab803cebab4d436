"""DeepLab's training loss: cross-entropy at logit resolution (SPEC §2, §4)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def shrink_labels(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize an int64 (B, H, W) label map to `size` by nearest neighbour, so 255 stays 255."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    resized = F.interpolate(mask[:, None].float(), size=size, mode="nearest")
    return resized[:, 0].long()


def segmentation_loss(
    outputs: Tensor | list[Tensor], mask: Tensor, ignore_index: int = 255
) -> Tensor:
    """Mean pixel-wise cross-entropy of each output against labels shrunk to its size, summed.

    DeepLab scores at output stride 8 against labels shrunk by 8 instead of upsampling the logits;
    an MSC network returns a list (fused, then one per scale) and every output gets its own loss.
    """
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    losses = [
        F.cross_entropy(out, shrink_labels(mask, out.shape[-2:]), ignore_index=ignore_index)
        for out in outputs
    ]
    return torch.stack(losses).sum()
