"""Saved network outputs for CRF tuning: one .npz per val image, so the search never reruns the
network (paper.md §5 protocol).

Format, one file per image: `image` uint8 (H, W, 3) RGB; `probs` float16 or float32 (C, H, W)
softmax at image resolution; `mask` uint8 or int64 (H, W) ground truth, 255 = ignore.
"""

import zipfile
from pathlib import Path

import numpy as np

from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.runtime.user_files import read_file


def save_probabilities(path, image, probs, mask) -> Path:
    """Write one image's RGB, softmax (stored as float16) and truth to `path` (.npz added)."""
    image, probs, mask = (_numpy(x) for x in (image, probs, mask))
    _check(image, probs, mask, str(path))
    path = Path(path)
    if path.suffix != ".npz":  # names may hold dots (Cityscapes ids do not, but be safe)
        path = path.with_name(path.name + ".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as tmp, open(tmp, "wb") as file:  # a file: no .npz added
        np.savez_compressed(
            file, image=image, probs=probs.astype(np.float16), mask=mask.astype(np.uint8)
        )
    return path


def load_probabilities(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> image uint8 (H, W, 3), probs float32 (C, H, W), mask int64 (H, W); a file that is
    not such an .npz raises UserError naming it."""
    return read_file(
        _read,
        path,
        "probabilities file",
        "delete it and save the probabilities again with `python src/evaluate.py ... "
        "save_probs=<dir>`",
    )


def _read(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not zipfile.is_zipfile(path):  # numpy would call any other file "pickled data"
        raise UserError(
            f"probabilities file {path} cannot be read (not an .npz archive: not a zip file): "
            "delete it and "
            "save the probabilities again with `python src/evaluate.py ... save_probs=<dir>`"
        )
    # allow_pickle=False: an object array would unpickle (run code) from a handed file
    with np.load(path, allow_pickle=False) as data:  # members decompress on access: read here
        missing = {"image", "probs", "mask"} - set(data.files)
        if missing:
            raise UserError(
                f"{path}: missing keys {sorted(missing)}; write it with save_probabilities"
            )
        image, probs, mask = data["image"], data["probs"], data["mask"]
    _check(image, probs, mask, str(path))
    return image, probs.astype(np.float32), mask.astype(np.int64)


def probability_files(folder, limit: int | None = None) -> list[Path]:
    """The sorted .npz files of a folder (the first `limit` of them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(
            f"probs_dir {folder} does not exist; save probabilities first with "
            "`python src/evaluate.py ... save_probs=<dir>`"
        )
    files = sorted(folder.glob("*.npz"))
    if not files:
        raise MissingFileError(f"probs_dir {folder} holds no .npz files")
    return files[:limit] if limit else files


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(image, probs, mask, where: str) -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UserError(f"{where}: image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if probs.ndim != 3 or probs.dtype.kind != "f" or probs.shape[1:] != image.shape[:2]:
        raise UserError(
            f"{where}: probs must be float (C, H, W) matching the image {image.shape[:2]}, "
            f"got {probs.dtype} {probs.shape}"
        )
    if mask.shape != image.shape[:2] or mask.dtype.kind not in "ui":
        raise UserError(
            f"{where}: mask must be integer (H, W) like the image, got {mask.dtype} {mask.shape}"
        )
