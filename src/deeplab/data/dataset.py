"""The one reader every data set shares: an id list plus image / mask path templates.

VOC, synthetic, and the converted Context, Person-Part and Cityscapes sets differ only in their
templates (see `datamodule.py`). Masks are read as palette indices through PIL (mode P or L), never
through OpenCV, whose colour conversion would silently turn VOC labels into RGB values.
"""

import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deeplab.data.classes import IGNORE_INDEX, voc_palette
from deeplab.data.images import MAX_PIXELS, check_size, exif_turned, read_rgb
from deeplab.data.normalization import normalize
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.runtime.user_files import read_file

log = logging.getLogger(__name__)


def read_ids(list_file: Path, limit: int | None = None) -> list[str]:
    """Ids of a split list (one per line; VOC's extra columns are dropped), first `limit` only.

    A UTF-8 BOM and CRLF line ends (lists saved on Windows) are read. Ids name the files read
    and the files written (predictions, saved probabilities) under their folders, so one that
    could leave its folder (`..`, an absolute path, a backslash) is refused naming the line;
    repeated ids are warned about (their images would count twice in the scores).
    """
    text = read_file(
        lambda p: p.read_text(encoding="utf-8-sig"),
        list_file,
        "split list",
        "run the prepare command again",
    )
    numbered = [(n, line.split()[0]) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        raise UserError(f"split list {list_file} is empty: re-run the prepare command")
    for number, name in numbered:
        check_id(name, f"split list {list_file} line {number}")
    ids = [name for _, name in numbered]
    repeated = sorted({name for name, count in Counter(ids).items() if count > 1})
    if repeated:
        log.warning(
            "split list %s repeats %d ids (%s): their images count more than once",
            list_file,
            len(repeated),
            ", ".join(repeated[:5]),
        )
    return ids[:limit] if limit is not None else ids


def check_id(name: str, where: str) -> None:
    """Raise UserError unless `name` is a relative path that stays inside its folder: plain
    names, or sub-folders joined by '/' (Cityscapes' `city/image` ids)."""
    parts = name.split("/")
    if "\\" in name or "\0" in name or any(part in ("", ".", "..") for part in parts):
        raise UserError(
            f"{where}: id {name!r} would name a file outside its folder (ids are relative "
            "names: no '..', '.', leading '/', empty part or backslash); fix the list or "
            "regenerate it with the prepare command"
        )


def read_mask(path: Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Class indices (H, W) uint8 from a palette (P) or grey (L) PNG: the palette's indices,
    never its colours; any other mode (RGB colours, 16-bit, alpha) is refused naming the file,
    as is one of more than `max_pixels` pixels."""
    return read_file(
        lambda p: _decode_mask(p, max_pixels),
        path,
        "mask",
        "re-extract the data set (prepare command)",
    )


def _decode_mask(path: Path, max_pixels: int | None) -> np.ndarray:
    with Image.open(path) as img:
        check_size(img, path, max_pixels)
        if img.mode not in ("P", "L"):
            raise UserError(
                f"mask {path} has PIL mode {img.mode}; masks must be 8-bit palette (P) or grey "
                "(L) PNGs holding class indices, not colours: convert it with the prepare command"
            )
        return np.array(img)


def check_mask(mask: np.ndarray, path: Path, num_classes: int) -> None:
    """Cheap per-sample guard: every value must be a class index or 255."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise UserError(
            f"mask {path} holds values {bad.tolist()} outside the classes 0..{num_classes - 1} "
            f"and {IGNORE_INDEX} (ignore): fix or regenerate this mask, or check data.num_classes"
        )


class SegmentationDataset(Dataset):
    """(image, mask) pairs named by `ids`, found through `{id}` path templates.

    Returns dicts with `image` float (3, H, W) normalized, `mask` int64 (H, W), `name` str.
    Missing files fail at construction; bad contents fail when the sample is loaded.
    """

    def __init__(
        self,
        ids: list[str],
        image_template: str,
        mask_template: str,
        num_classes: int,
        mean,
        std,
        transform: Callable | None = None,
        max_pixels: int | None = MAX_PIXELS,
    ):
        self.ids, self.max_pixels = ids, max_pixels
        self.image_template, self.mask_template = image_template, mask_template
        self.num_classes, self.mean, self.std = num_classes, mean, std
        self.transform = transform
        for name in ids:
            for path in (self.image_path(name), self.mask_path(name)):
                if not path.is_file():
                    raise MissingFileError(
                        f"{path} is missing for id {name!r} of the split list: re-run the "
                        "prepare command, or remove the id from the list"
                    )

    def image_path(self, name: str) -> Path:
        return Path(self.image_template.format(id=name))

    def mask_path(self, name: str) -> Path:
        return Path(self.mask_template.format(id=name))

    def read_mask(self, path: Path) -> np.ndarray:
        """Class indices with 255 for void; a data set with its own mask format overrides it."""
        return read_mask(path, self.max_pixels)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 RGB image and checked mask of one sample, at original size."""
        name = self.ids[index]
        image = read_rgb(self.image_path(name), self.max_pixels)
        mask = self.read_mask(self.mask_path(name))
        if image.shape[:2] != mask.shape:
            turned = image.shape[1::-1] == mask.shape and exif_turned(self.image_path(name))
            raise UserError(
                f"image {self.image_path(name)} is {image.shape[1]}x{image.shape[0]} but mask "
                f"{self.mask_path(name)} is {mask.shape[1]}x{mask.shape[0]}: they must match"
                + (
                    " (the image carries an EXIF rotation, applied as a viewer does; the mask "
                    "follows the unrotated pixels: rotate the image's pixels and drop the tag)"
                    if turned
                    else ""
                )
            )
        check_mask(mask, self.mask_path(name), self.num_classes)
        return image, mask

    def __getitem__(self, index: int) -> dict:
        image, mask = self.load(index)
        if self.transform is not None:
            # albumentations keeps its own RNG; seeding it from torch's (which DataLoader seeds per
            # worker and the training loop per epoch) makes augmentation reproducible and resumable
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(int(torch.randint(2**31 - 1, ())))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "name": self.ids[index],
        }


def write_mask(mask: np.ndarray, path: Path) -> None:
    """Save class indices as a VOC-palette PNG (mode P), the format every reader here expects."""
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L")
    img.putpalette(voc_palette().tobytes())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG", optimize=False)  # format: the path may be a temporary name
