"""Test-time wrappers around a network (mmseg style): they live outside the LightningModule.

Each wrapper maps a normalized (B, 3, H, W) image to (B, C, H, W) logits at the input resolution,
so wrappers nest: `SlidingWindow(MultiScaleFlip(PadTo(net, 513), ...), ...)`.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.crf.crf_rnn import WithCRFRNN
from deeplab.runtime.errors import UserError


def resize(x: Tensor, size) -> Tensor:
    """Bilinear resize of score maps (DeepLab upsamples logits this way, paper.md §1).

    Half-pixel centres (align_corners=False), this repository's default; `PadTo` gives the
    released test nets' corner-aligned Interp instead.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PadTo(nn.Module):
    """The released test nets' protocol (paper.md §12): pad bottom/right to `size` x `size` with the
    mean colour, run the network, upsample the logits to `size` with corners aligned (Caffe's
    `Interp zoom_factor: 8`, 65 -> 513), crop back to the image.

    Inputs are normalized, so the mean colour is 0 (Caffe pads after converting to float, so it
    is the exact mean). An image larger than `size` is refused: Caffe would centre-crop it and
    never score the rest.
    """

    def __init__(self, net: nn.Module, size: int):
        super().__init__()
        self.net, self.size = net, int(size)

    def forward(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        if max(h, w) > self.size:
            fit = 8 * ((max(h, w) + 6) // 8) + 1  # the smallest 8k + 1: Caffe's stride-8 geometry
            raise UserError(
                f"tta.pad_to={self.size} is smaller than a {h}x{w} image: set tta.pad_to={fit} "
                f"(or larger), add tta.tile={self.size} to score it in tiles, or tta.pad_to=null"
            )
        logits = self.net(F.pad(image, (0, self.size - w, 0, self.size - h)))
        if isinstance(logits, list):  # an MSC network left in training mode
            logits = logits[0]
        full = F.interpolate(
            logits, size=(self.size, self.size), mode="bilinear", align_corners=True
        )
        return full[..., :h, :w]


class MultiScaleFlip(nn.Module):
    """Average the logits over input scales and (optionally) horizontal flips."""

    def __init__(self, net: nn.Module, scales=(1.0,), flip: bool = False):
        super().__init__()
        self.net, self.scales, self.flip = net, tuple(scales), flip

    def forward(self, image: Tensor) -> Tensor:
        size = image.shape[-2:]
        total = 0
        for scale in self.scales:
            scaled = resize(image, [max(1, round(s * scale)) for s in size])
            views = [scaled, scaled.flip(-1)] if self.flip else [scaled]
            for i, view in enumerate(views):
                logits = resize(self.net(view), size)
                total = total + (logits.flip(-1) if i else logits)
        return total / (len(self.scales) * (2 if self.flip else 1))


class SlidingWindow(nn.Module):
    """Run the network on overlapping `tile` x `tile` crops and average the overlaps.

    For full-resolution Cityscapes (2048 x 1024) where a whole image does not fit in memory.
    Border tiles are shifted inwards to stay whole; a side shorter than the tile is used whole.
    """

    def __init__(self, net: nn.Module, num_classes: int, tile: int = 513, overlap: float = 1 / 3):
        super().__init__()
        if not 0 <= overlap < 1:
            raise UserError(f"sliding-window overlap must be in [0, 1), got {overlap}")
        self.net, self.num_classes, self.tile = net, num_classes, tile
        self.stride = max(1, int(tile * (1 - overlap)))

    def _starts(self, length: int) -> list[int]:
        if length <= self.tile:
            return [0]
        count = math.ceil((length - self.tile) / self.stride) + 1
        return sorted({min(i * self.stride, length - self.tile) for i in range(count)})

    def forward(self, image: Tensor) -> Tensor:
        b, _, h, w = image.shape
        total = image.new_zeros(b, self.num_classes, h, w)
        count = image.new_zeros(1, 1, h, w)
        for y in self._starts(h):
            for x in self._starts(w):
                crop = image[..., y : y + self.tile, x : x + self.tile]
                ch, cw = crop.shape[-2:]
                logits = resize(self.net(crop), (ch, cw))
                total[..., y : y + ch, x : x + cw] += logits
                count[..., y : y + ch, x : x + cw] += 1
        return total / count


def evaluation_network(
    net: nn.Module,
    num_classes: int,
    scales=(1.0,),
    flip=False,
    tile=None,
    overlap=1 / 3,
    pad_to=None,
):
    """The evaluation network: `net`, padded to `pad_to` (the released test protocol) if set,
    with multi-scale / flip, then sliding window if asked. A CRF-RNN layer stays last: the
    wrappers go inside it (in place), so it refines their logits once, on the whole image."""
    if isinstance(net, WithCRFRNN):
        net.net = evaluation_network(net.net, num_classes, scales, flip, tile, overlap, pad_to)
        return net.eval()
    if pad_to:
        net = PadTo(net, pad_to)
    if tuple(scales) != (1.0,) or flip:
        net = MultiScaleFlip(net, scales, flip)
    if tile:
        net = SlidingWindow(net, num_classes, tile, overlap)
    return net.eval()


@torch.no_grad()
def probabilities(net: nn.Module, image: Tensor, size) -> Tensor:
    """Softmax of the network's logits bilinearly upsampled to `size` (the original image)."""
    logits = net(image)
    if isinstance(logits, list):  # an MSC network left in training mode
        logits = logits[0]
    return resize(logits, size).softmax(1)
