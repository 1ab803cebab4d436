"""DeepLab's training augmentation (paper.md §7) on albumentations.

Geometry runs through albumentations (image bilinear, mask nearest); the tensor conversion is
`deeplab.data.normalization.normalize`.
"""

from collections.abc import Sequence

import albumentations as A
import cv2
import torch

from deeplab.data.classes import IGNORE_INDEX
from deeplab.runtime.errors import UserError
from deeplab.weights.conventions import CAFFE_MEAN_RGB, UNIT_STD

__all__ = ["CAFFE_MEAN_RGB", "UNIT_STD", "pad_collate", "train_transform"]


def random_scale(mode: str, scale_range: Sequence[float], scales: Sequence[float]) -> list:
    """`uniform`: factor ~ U(scale_range) (the paper's text); `discrete`: one of `scales`
    with equal chance (the ResNet prototxt); `none`: no scaling (the VGG prototxts, Tables 1-3)."""
    if mode == "none":
        return []
    if mode == "uniform":
        low, high = scale_range
        return [A.RandomScale(scale_limit=(low - 1.0, high - 1.0), p=1.0)]
    if mode == "discrete":
        fixed = [A.RandomScale(scale_limit=(s - 1.0, s - 1.0), p=1.0) for s in scales]
        return [A.OneOf(fixed, p=1.0)]
    raise UserError(f"data.random_scale={mode!r}: use one of uniform, discrete, none")


def train_transform(
    crop_size: int,
    mean: Sequence[float],
    scale_mode: str = "uniform",
    scale_range: Sequence[float] = (0.5, 1.5),
    scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
    flip: bool = True,
) -> A.Compose:
    """Scale, pad bottom/right to the crop (mean colour / 255, as Caffe does), random crop, flip.

    Scaling runs on uint8 with the size truncated, int(h * s), as Caffe's data transformer does;
    then the image turns float (0-255, values unchanged) so that the padding is the exact mean
    colour, 0 after normalization, as Caffe pads after converting to double.
    """
    steps = random_scale(scale_mode, scale_range, scales)
    steps += [
        A.ToFloat(max_value=1.0),
        A.PadIfNeeded(
            min_height=crop_size,
            min_width=crop_size,
            position="top_left",
            border_mode=cv2.BORDER_CONSTANT,
            fill=tuple(float(m) for m in mean),
            fill_mask=IGNORE_INDEX,
        ),
        A.RandomCrop(height=crop_size, width=crop_size),
    ]
    if flip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps)


def pad_collate(samples: list[dict]) -> dict:
    """Batch samples of different sizes: pad bottom/right, image with 0 (the mean after
    normalization), mask with 255 so metrics and the loss ignore the padding."""
    height = max(s["image"].shape[1] for s in samples)
    width = max(s["image"].shape[2] for s in samples)
    images = torch.zeros(len(samples), 3, height, width)
    masks = torch.full((len(samples), height, width), IGNORE_INDEX, dtype=torch.int64)
    for i, s in enumerate(samples):
        h, w = s["mask"].shape
        images[i, :, :h, :w] = s["image"]
        masks[i, :h, :w] = s["mask"]
    return {"image": images, "mask": masks, "name": [s["name"] for s in samples]}
