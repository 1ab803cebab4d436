"""A seeded toy data set in the VOC on-disk layout, for the CPU demo and the tests.

The class of an object is its shape (never its colour): colours and textures of objects and
background are random, sizes run from 5% to 80% of the image side, objects overlap (small ones
drawn on top), and a thin 255 band marks every boundary, as in VOC. Each image draws from its own
`(seed, split, index)` random stream, so the same parameters give the same bytes.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from deeplab.data.classes import IGNORE_INDEX, SYNTHETIC_CLASSES
from deeplab.data.dataset import write_mask
from deeplab.runtime.errors import UserError

SPLIT_CODES = {"train": 0, "val": 1}


def shape_mask(kind: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float):
    """Boolean mask of one shape of half-size `r` centred on (cy, cx)."""
    dy, dx = np.abs(yy - cy), np.abs(xx - cx)
    if kind == "circle":
        return dy**2 + dx**2 <= r**2
    if kind == "ring":
        d2 = dy**2 + dx**2
        return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
    if kind == "square":
        return (dy <= r) & (dx <= r)
    if kind == "diamond":
        return dy + dx <= r
    if kind == "cross":
        arm = r / 3
        return ((dy <= arm) & (dx <= r)) | ((dx <= arm) & (dy <= r))
    if kind == "triangle":  # apex up, base 2r wide
        rel = yy - (cy - r)
        return (rel >= 0) & (rel <= 2 * r) & (dx <= rel / 2)
    raise ValueError(f"unknown synthetic shape {kind!r}")


def texture(rng: np.random.Generator, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A random (H, W, 3) float texture: flat, stripes, checks, or a smooth colour field."""
    first, second = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    kind = rng.integers(4)
    if kind == 0:
        weight = np.zeros_like(yy)
    elif kind == 1:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        weight = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0) * 1.0
    elif kind == 2:
        cell = rng.integers(3, 12)
        weight = ((yy // cell + xx // cell) % 2) * 1.0
    else:
        coarse = rng.uniform(0, 1, (4, 4))
        weight = ndimage.zoom(coarse, size / 4, order=1)[:size, :size]
    return first + weight[..., None] * (second - first)


def draw_sample(rng: np.random.Generator, size: int, max_objects: int):
    """One (image uint8 (S, S, 3), mask uint8 (S, S)) pair."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    image = texture(rng, size, yy, xx)
    mask = np.zeros((size, size), np.uint8)
    count = rng.integers(1, max_objects + 1)
    half_sizes = np.sort(rng.uniform(0.05, 0.8, count) * size / 2)[::-1]  # big ones first
    for r in half_sizes:
        label = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        cy, cx = rng.uniform(0.1 * size, 0.9 * size, 2)
        region = shape_mask(SYNTHETIC_CLASSES[label], yy, xx, cy, cx, r)
        image[region] = texture(rng, size, yy, xx)[region]
        mask[region] = label
    image += rng.normal(0, 8, image.shape)
    edges = ndimage.grey_dilation(mask, size=3) != ndimage.grey_erosion(mask, size=3)
    mask[edges] = IGNORE_INDEX
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_split(root: Path, split: str, count: int, seed: int, size: int, max_objects: int):
    names = [f"{split}_{i:04d}" for i in range(count)]
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, SPLIT_CODES[split], i])
        image, mask = draw_sample(rng, size, max_objects)
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=92)
        write_mask(mask, root / "SegmentationClass" / f"{name}.png")
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def _built_with(meta: Path) -> dict | None:
    """The parameters a synthetic set was built with (None: not recorded or unreadable)."""
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError):
        return None


def build_synthetic(
    root: str | Path,
    seed: int = 0,
    num_train: int = 240,
    num_val: int = 50,
    image_size: int = 128,
    max_objects: int = 4,
) -> Path:
    """Create the set at `root` unless it exists with the same parameters.

    Writes into a temporary sibling folder and renames it into place, so concurrent builders
    (DDP ranks, multirun jobs) never see a half-written set: the first rename wins.
    """
    root = Path(root)
    params = dict(
        seed=seed,
        num_train=num_train,
        num_val=num_val,
        image_size=image_size,
        max_objects=max_objects,
        classes=SYNTHETIC_CLASSES,
    )
    meta = root / "synthetic.json"
    if root.exists():
        if _built_with(meta) != params:
            raise UserError(
                f"{root} exists but was not built with these synthetic parameters {params}: "
                "delete the folder to rebuild it, or set data.root to another folder"
            )
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / sub).mkdir(parents=True)
        write_split(tmp, "train", num_train, seed, image_size, max_objects)
        write_split(tmp, "val", num_val, seed, image_size, max_objects)
        (tmp / "synthetic.json").write_text(json.dumps(params))
        os.rename(tmp, root)
    except OSError:
        if not meta.is_file():  # the rename failed for a reason other than a concurrent winner
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
