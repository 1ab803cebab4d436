"""Official annotation formats -> class-index palette PNGs that the shared reader reads."""

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from cityscapesscripts.helpers.labels import labels as cityscapes_labels
from scipy.io import loadmat

from deeplab.data.classes import IGNORE_INDEX
from deeplab.data.dataset import read_mask, write_mask
from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import UserError
from deeplab.runtime.progress import track
from deeplab.runtime.user_files import read_file

# PASCAL-Part part names (Annotations_Part/*.mat) merged into Person-Part's 6 classes.
PERSON_PARTS = {
    1: ("head", "hair", "leye", "reye", "lear", "rear", "lebrow", "rebrow", "nose", "mouth"),
    2: ("torso", "neck"),
    3: ("luarm", "ruarm"),
    4: ("llarm", "rlarm", "lhand", "rhand"),
    5: ("luleg", "ruleg"),
    6: ("llleg", "rlleg", "lfoot", "rfoot"),
}
PART_TO_CLASS = {name: label for label, names in PERSON_PARTS.items() for name in names}


def load_mat(path: Path) -> dict:
    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except (ValueError, OSError, TypeError) as err:
        raise UserError(f"{path} is not a readable .mat file ({err}): re-extract it") from err


def sbd_mask(path: Path) -> np.ndarray:
    """SBD `cls/*.mat`: the `GTcls.Segmentation` class map (0..20, no boundary band)."""
    return np.asarray(load_mat(path)["GTcls"].Segmentation, dtype=np.uint8)


def context_lut(labels_59: Path) -> np.ndarray:
    """459-class id -> 0..59 from the official `59_labels.txt` ("<id>: <name>" lines): the 59
    classes become 1..59 in id order, every other class becomes background 0."""
    text = read_file(Path.read_text, labels_59, "class list", "re-download it")
    ids = sorted(int(line.split(":")[0]) for line in text.splitlines() if ":" in line)
    if len(ids) != 59:
        raise UserError(f"{labels_59} lists {len(ids)} classes, expected 59: re-download it")
    lut = np.zeros(max(460, max(ids) + 1), dtype=np.uint8)
    lut[ids] = np.arange(1, 60, dtype=np.uint8)
    return lut


def context_mask(path: Path, lut: np.ndarray) -> np.ndarray:
    """Context `trainval/*.mat`: `LabelMap` of 459-class ids, mapped through `lut`."""
    return lut[np.asarray(load_mat(path)["LabelMap"], dtype=np.int64)]


def person_part_mask(path: Path) -> np.ndarray | None:
    """PASCAL-Part `Annotations_Part/*.mat` -> 7-class person-part map, or None if no person
    part is annotated. Layout: anno.objects[i].{class, mask, parts[j].{part_name, mask}}."""
    anno = load_mat(path)["anno"]
    mask, found = None, False
    for obj in np.atleast_1d(anno.objects):
        if mask is None:
            mask = np.zeros(np.shape(obj.mask), np.uint8)
        if getattr(obj, "class", None) != "person":
            continue
        for part in np.atleast_1d(obj.parts):
            label = PART_TO_CLASS.get(getattr(part, "part_name", None))
            if label is not None:
                mask[np.asarray(part.mask, bool)] = label
                found = True
    return mask if found else None


def cityscapes_lut() -> np.ndarray:
    """labelId -> trainId from cityscapesscripts' official table; unused ids -> 255."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    for lab in cityscapes_labels:
        if 0 <= lab.id < 256 and lab.trainId not in (-1, IGNORE_INDEX):
            lut[lab.id] = lab.trainId
    return lut


def cityscapes_mask(path: Path, lut: np.ndarray) -> np.ndarray:
    return lut[read_mask(path)]


def convert_all(pairs: Iterable[tuple[Path, Path]], fn, description: str) -> list[Path]:
    """Write `fn(src)` for every (src, dst) pair not yet converted (None results are skipped);
    return the destinations that exist afterwards. A rerun converts only what is missing."""
    pairs = list(pairs)
    todo = [(src, dst) for src, dst in pairs if not dst.is_file()]
    if todo:
        done = len(pairs) - len(todo)
        note = f" ({done} converted before)" if done else ""
        for src, dst in track(todo, f"{description}{note}", unit="files"):
            mask = fn(src)
            if mask is not None:
                with written_atomically(dst) as tmp:
                    write_mask(mask, tmp)
    return [dst for _, dst in pairs if dst.is_file()]
