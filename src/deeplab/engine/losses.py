"""DeepLab's training loss: cross-entropy at logit resolution (paper.md §2, §4, §12)."""

import torch
import torch.nn.functional as F
from torch import Tensor


def aligned_positions(n_in: int, n_out: int, device=None) -> Tensor:
    """The input index nearest to each output position of a corner-aligned resize of n_in to
    n_out: round(i (n_in - 1) / (n_out - 1)), in integer arithmetic (exact, no float ties)."""
    if n_out == 1:
        return torch.zeros(1, dtype=torch.long, device=device)
    i = torch.arange(n_out, device=device)
    return (2 * i * (n_in - 1) + (n_out - 1)) // (2 * (n_out - 1))


def shrink_labels(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """The labels at the score map's positions, as Caffe's `Interp shrink_factor` gives them.

    Caffe's Interp is bilinear with corners aligned: output i reads input i (n_in-1) / (n_out-1).
    From a 321 crop to 41x41 that is exactly `label[8i, 8j]` (to 21x21, `label[16i, 16j]`; from
    513 to 65, `label[8i, 8j]`): whole positions, so no labels are blended and 255 stays 255. For
    other sizes Caffe would blend label values; here the nearest position's label is taken.
    """
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    rows = aligned_positions(mask.shape[-2], size[0], mask.device)
    cols = aligned_positions(mask.shape[-1], size[1], mask.device)
    return mask[:, rows[:, None], cols[None, :]]


def segmentation_loss(
    outputs: Tensor | list[Tensor], mask: Tensor, ignore_index: int = 255
) -> Tensor:
    """Mean pixel-wise cross-entropy of each output against labels shrunk to its size, summed.

    DeepLab scores at output stride 8 against labels shrunk by 8 instead of upsampling the logits;
    an MSC network returns a list (fused, then one per scale) and every output gets its own loss,
    each with weight 1 (the ResNet train prototxt). The mean is over the labelled pixels of the
    whole batch, as Caffe's SoftmaxWithLoss (normalization VALID) takes it.
    """
    outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
    losses = [
        F.cross_entropy(out, shrink_labels(mask, out.shape[-2:]), ignore_index=ignore_index)
        for out in outputs
    ]
    return torch.stack(losses).sum()
