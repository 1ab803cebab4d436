"""The one image reader of the library: any file PIL opens -> RGB uint8, as a viewer shows it.

Data sets, predict.py and everything else read pictures through `read_rgb`, so an image gives
the same pixels wherever it is used. What "as a viewer shows it" means here:
- EXIF orientation is applied (phone photos are stored sideways with a rotate tag);
- the first frame of a multi-frame file (GIF, APNG, multi-page TIFF) is used;
- transparency (RGBA, LA, PA, palette or tRNS transparency) is composited on white, the page
  colour of most viewers and browsers; transparent pixels do not keep their hidden colour;
- 16-bit and 32-bit integer images are scaled by their bit depth (65535 -> 255), not clipped;
  float images must lie in [0, 1];
- palette, grey, 1-bit, CMYK and YCbCr images are converted with PIL's conversions.
Embedded colour profiles (ICC) are not applied: the paper's models were trained on the stored
values (Caffe reads through OpenCV, which ignores them), and an evaluation must see the pixels
its training did. Label masks are not read here: they are class indices (data/reader.py).
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_file

EXIF_ORIENTATION = 0x0112  # the tag; 5..8 are the transposing orientations
TIFF_BITS_PER_SAMPLE, TIFF_SAMPLE_FORMAT = 258, 339  # SampleFormat 1: unsigned, 2: signed, 3: float
BACKGROUND = (255, 255, 255)  # what transparent pixels show
ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
PLAIN_MODES = {"RGB", "RGBX", "L", "1", "P", "CMYK", "YCbCr"}  # PIL converts these to RGB
HIGH_DEPTH_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
FIX = "convert it to an 8-bit RGB JPEG or PNG, or remove it"
# The suffixes of the pictures read through `read_rgb` where a folder is listed (an own data
# set's images/, predict.py's input): formats PIL decodes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


# Largest image decoded (width x height), checked from the header before any pixel is read: a
# 420 KB PNG of 12000 x 12000 pixels decodes to 432 MB and took predict.py past 8 GB. 100 MP is
# above any camera and data set used here (Cityscapes: 2 MP); `data.max_pixels` changes it.
MAX_PIXELS = 100_000_000


def read_rgb(path: str | Path, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file; a file it cannot read as a picture, or one of more
    than `max_pixels` pixels (None: no limit), raises a UserError naming it (MissingFileError
    when it does not exist)."""
    return read_file(
        lambda p: _decode(p, max_pixels),
        path,
        "image",
        FIX,
        extra_errors=(Image.DecompressionBombError,),
    )


def check_size(img: Image.Image, path, max_pixels: int | None) -> None:
    """Refuse an opened (not yet decoded: PIL reads the header only) image above the limit."""
    if max_pixels and img.width * img.height > max_pixels:
        raise UserError(
            f"image {path} is {img.width} x {img.height} pixels ({img.width * img.height / 1e6:.0f}"
            f" MP), more than the limit of {max_pixels / 1e6:g} MP (data.max_pixels), so it was "
            "not decoded: shrink it, or raise data.max_pixels if the memory is there"
        )


def _decode(path: Path, max_pixels: int | None) -> np.ndarray:
    with Image.open(path) as img:
        check_size(img, path, max_pixels)
        img.seek(0)  # multi-frame files: the first frame
        white = white_level(img)  # from the file's own tags, which the turned copy loses
        return to_rgb(ImageOps.exif_transpose(img), path, white)


def exif_turned(path: str | Path) -> bool:
    """Whether the file's EXIF orientation turns it a quarter (width and height swap)."""
    with Image.open(path) as img:
        return img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)


def to_rgb(img: Image.Image, path: str | Path = "image", white: float | None = None) -> np.ndarray:
    """An opened PIL image as (H, W, 3) uint8 RGB, following the rules in the module doc;
    `white`: the sample value shown as white in a high-depth image (default: `white_level`)."""
    if img.mode in HIGH_DEPTH_MODES:
        grey = _to_uint8(np.asarray(img), white or white_level(img), path)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")  # also applies palette and tRNS transparency
        page = Image.new("RGBA", img.size, (*BACKGROUND, 255))
        return np.array(Image.alpha_composite(page, rgba).convert("RGB"))
    if img.mode in PLAIN_MODES:
        return np.array(img.convert("RGB"))
    raise UserError(f"image {path} has PIL mode {img.mode}, which this reader does not take: {FIX}")


def white_level(img: Image.Image) -> float:
    """The largest sample value of the image's bit depth: 1.0 for floats; TIFF's BitsPerSample
    and SampleFormat when the file has them (a 12-bit TIFF: 4095); 65535 for PIL's I;16 and for
    PNG (at most 16 bits); PIL's signed 32-bit integers otherwise."""
    if img.mode == "F":
        return 1.0
    tags = getattr(img, "tag_v2", None)
    if tags and TIFF_BITS_PER_SAMPLE in tags:
        bits = int(np.ravel(tags[TIFF_BITS_PER_SAMPLE])[0])  # one value or one per channel
        signed = int(np.ravel(tags.get(TIFF_SAMPLE_FORMAT, 1))[0]) == 2
        return 2.0 ** (bits - signed) - 1
    if img.mode.startswith("I;16") or img.format == "PNG":
        return 2.0**16 - 1
    return 2.0**31 - 1


def _to_uint8(values: np.ndarray, white: float, path) -> np.ndarray:
    values = values.astype(np.float64)
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > white:
        raise UserError(
            f"image {path} holds values {values.min():g} .. {values.max():g} outside 0 .. "
            f"{white:g}, the black-to-white range of its sample format: {FIX}"
        )
    return np.round(values / white * 255).astype(np.uint8)
