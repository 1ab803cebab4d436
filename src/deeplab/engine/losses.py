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


def lovasz_softmax_loss(scores: Tensor, mask: Tensor, ignore_index: int = 255) -> Tensor:
    """The Lovász-softmax loss (Berman, Rannen Triki & Blaschko, CVPR 2018) of full-resolution
    scores (B, C, H, W): a convex surrogate of 1 - IoU per class, averaged over the classes
    present in the batch's labels, over all its labelled pixels at once.

    For the CRF-RNN layer (`loss.crf_rnn_loss=lovasz_softmax`): cross-entropy trains the layer
    towards a weaker CRF than the one that scores best in mIoU (docs/crf-rnn.md, Measured), since
    a pixel's error under it has no bound; here a pixel's error is 1 - its true class's
    probability, at most 1, and its weight is how much it moves the class's IoU.
    """
    classes = scores.shape[1]
    probs = scores.float().softmax(1).permute(0, 2, 3, 1).reshape(-1, classes)
    labels = mask.reshape(-1)
    labelled = labels != ignore_index
    probs, labels = probs[labelled], labels[labelled]
    per_class = []
    for c in range(classes):
        truth = (labels == c).to(probs.dtype)
        if not truth.any():
            continue
        errors, order = torch.sort((truth - probs[:, c]).abs(), descending=True)
        per_class.append(torch.dot(errors, _jaccard_steps(truth[order])))
    return torch.stack(per_class).mean() if per_class else scores.sum() * 0.0


def _jaccard_steps(truth_sorted: Tensor) -> Tensor:
    """How the Jaccard loss 1 - |I| / |U| grows as each pixel, in descending order of error,
    is counted wrong: the gradient of its Lovász extension at those errors."""
    positives = truth_sorted.sum()
    intersection = positives - truth_sorted.cumsum(0)
    union = positives + (1.0 - truth_sorted).cumsum(0)
    loss = 1.0 - intersection / union
    return torch.cat([loss[:1], loss[1:] - loss[:-1]])


# The losses a CRF-RNN layer's full-resolution scores can train with (`loss.crf_rnn_loss`).
LAYER_LOSSES = {"cross_entropy": segmentation_loss, "lovasz_softmax": lovasz_softmax_loss}
