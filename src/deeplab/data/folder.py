"""`data=folder data.root=DIR`: a data set in the layout people already have (docs/own-data.md).

    DIR/images/<id>.<jpg|jpeg|png|bmp|tif|tiff|webp>   any mode PIL reads, EXIF orientation applied
    DIR/masks/<id>.png      index PNG (grey or palette: value = class, data.ignore_index = void)
                            or, when classes.txt gives colours, an RGB PNG in those colours
    DIR/classes.txt         one class per line in index order: `name` or `name R G B`;
                            a line `ignore R G B` names the void colour (not a class)
    DIR/train.txt, val.txt  optional split lists (one id per line); without them a seeded split
                            (data.val_fraction, data.seed) is written to data.split_dir, which
                            a training's checkpoints record (relative to the run) and evaluate
                            reads back, never drawing it again

The class count comes from classes.txt through the `deeplab_folder_classes` resolver
(conf/data/folder.yaml), so `data.num_classes` and the models' `num_classes` need no typing.
Masks are turned into class indices 0..C-1 with 255 for void as they are read, so losses,
metrics and padding (which use 255) work unchanged whatever `data.ignore_index` the files use.
"""

import random
from pathlib import Path

import numpy as np
from PIL import Image

from deeplab.data import classes
from deeplab.data.class_list import ClassList, read_classes, read_lines
from deeplab.data.datamodule import SegmentationDataModule
from deeplab.data.dataset import SegmentationDataset
from deeplab.data.images import IMAGE_SUFFIXES, check_size
from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.runtime.user_files import read_file

SHOWN = 8  # ids listed in an error message before "and N more"


def palette_of(class_list: ClassList) -> np.ndarray:
    """(256, 3) colours for masks and figures: the file's, VOC's where a line gives none."""
    palette = classes.voc_palette()
    for index, colour in enumerate(class_list.colours):
        if colour is not None:
            palette[index] = colour
    if class_list.ignore_colour is not None:
        palette[classes.IGNORE_INDEX] = class_list.ignore_colour
    return palette


def listed(ids: list[str], more: str = "") -> str:
    shown = ", ".join(ids[:SHOWN])
    return shown + (f" and {len(ids) - SHOWN} more" if len(ids) > SHOWN else "") + more


def scan(root: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """{id: image path}, {id: mask path}; every image has its mask and every mask its image."""
    images_dir, masks_dir = root / "images", root / "masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise MissingFileError(
                f"{folder} is missing: data=folder reads DIR/images/<id>.jpg (or .png, ...) and "
                "DIR/masks/<id>.png (docs/own-data.md)"
            )
    images = by_id(images_dir, IMAGE_SUFFIXES, "images")
    masks = by_id(masks_dir, (".png",), "masks")
    no_mask, no_image = sorted(set(images) - set(masks)), sorted(set(masks) - set(images))
    if no_mask:
        raise UserError(
            f"images without a mask in {masks_dir}: {listed(no_mask)}; add <id>.png masks or "
            "move those images out of images/"
        )
    if no_image:
        raise UserError(
            f"masks without an image in {images_dir}: {listed(no_image)}; add the images or "
            "move those masks out of masks/"
        )
    if not images:
        raise UserError(f"{images_dir} holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return images, masks


def by_id(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """{id: path} of the files in `folder` with one of `suffixes` (any case). Refused by name:
    a directory with such a name (`zz.jpg/`), and ids that one id could mean: the same but for
    case (`a.png` / `a.PNG`, `a.jpg` / `A.jpg`: one file on some file systems) and ids with
    surrounding whitespace (split lists are read stripped)."""
    found: dict[str, Path] = {}
    folded: dict[str, Path] = {}
    twice, spaced = [], []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith("."):
            continue
        if path.is_dir():
            raise UserError(
                f"{path} is a directory, not one of the {what}: move it out of {folder}"
            )
        if path.stem != path.stem.strip():
            spaced.append(repr(path.name))
        key = path.stem.strip().casefold()
        if key in folded:
            twice.append(f"{folded[key].name} / {path.name}")
        folded[key] = found[path.stem] = path
    if twice:
        raise UserError(
            f"{folder} holds two {what} with one id: {listed(twice)}; rename or remove one of "
            "each pair (an id names one image and its mask; ids differing only in case are one "
            "file on some file systems)"
        )
    if spaced:
        raise UserError(
            f"{folder} holds {what} whose names begin or end with whitespace: {listed(spaced)}; "
            "rename them (split lists cannot tell such ids apart)"
        )
    return found


class FolderDataset(SegmentationDataset):
    """SegmentationDataset over scanned paths, masks decoded through the folder's class list."""

    def __init__(self, ids, images, masks, class_list: ClassList, ignore_index: int, **kwargs):
        self.images, self.masks = images, masks
        self.class_list, self.ignore_index = class_list, ignore_index
        super().__init__(ids, "", "", len(class_list.names), **kwargs)

    def image_path(self, name: str) -> Path:
        return self.images[name]

    def mask_path(self, name: str) -> Path:
        return self.masks[name]

    def read_mask(self, path: Path) -> np.ndarray:
        fix = "save masks as 8-bit PNGs (docs/own-data.md)"
        return read_file(self._decode, path, "mask", fix)

    def _decode(self, path: Path) -> np.ndarray:
        with Image.open(path) as img:
            check_size(img, path, self.max_pixels)  # before decoding, as every image
            if img.mode in ("RGB", "RGBA"):
                return self.from_colours(np.array(img.convert("RGB")), path)
            if img.mode in ("P", "PA", "L", "LA", "1", "I", "I;16"):
                values = np.array(img.getchannel(0) if img.mode in ("PA", "LA") else img)
                return self.from_indices(values.astype(np.int64), path)
        raise UserError(f"mask {path} has PIL mode {img.mode}: {fix_mode(self.class_list)}")

    def from_indices(self, values: np.ndarray, path: Path) -> np.ndarray:
        count = len(self.class_list.names)
        void = values == self.ignore_index
        bad = np.unique(values[(values >= count) & ~void])
        if bad.size:
            raise UserError(
                f"mask {path} holds values {listed([str(v) for v in bad.tolist()])}, neither a "
                f"class (0..{count - 1}, classes.txt) nor data.ignore_index={self.ignore_index}: "
                "fix the mask, add the classes to classes.txt, or set data.ignore_index"
            )
        return np.where(void, classes.IGNORE_INDEX, values).astype(np.uint8)

    def from_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        known = self.class_list
        if not known.has_colours:
            raise UserError(f"mask {path} is an RGB image: {fix_mode(known)}")
        table = {c: i for i, c in enumerate(known.colours) if c is not None}
        if known.ignore_colour is not None:
            table[known.ignore_colour] = classes.IGNORE_INDEX
        wide = rgb.astype(np.int64)
        keys = wide[..., 0] << 16 | wide[..., 1] << 8 | wide[..., 2]
        codes = np.array([r << 16 | g << 8 | b for r, g, b in table], dtype=np.int64)
        order = np.argsort(codes)
        where = np.clip(np.searchsorted(codes[order], keys), 0, len(codes) - 1)
        found = codes[order][where] == keys
        if not found.all():
            y, x = np.argwhere(~found)[0]
            colour = tuple(int(v) for v in rgb[y, x])
            raise UserError(
                f"mask {path} has colour {colour} at x={x}, y={y} ({int((~found).sum())} pixels), "
                f"which no line of classes.txt gives: add it as a class (or as `ignore "
                f"{' '.join(map(str, colour))}`), or fix the mask (anti-aliased edges: save "
                "masks without smoothing)"
            )
        values = np.array(list(table.values()), dtype=np.uint8)
        return values[order][where]


def fix_mode(class_list: ClassList) -> str:
    if class_list.has_colours:
        return "save it as an index PNG (grey or palette) or as RGB in the colours of classes.txt"
    return (
        "save it as an index PNG (grey or palette: pixel value = class index), or give each "
        "class its colour in classes.txt (`name R G B`) to read RGB masks"
    )


class FolderDataModule(SegmentationDataModule):
    """Images, masks and classes.txt in one folder; see the module doc for the layout."""

    prepare_hint = "see docs/own-data.md for the folder layout"

    def __init__(
        self,
        root: str,
        ignore_index: int = classes.IGNORE_INDEX,
        val_fraction: float = 0.1,
        seed: int = 0,
        split_dir: str | None = None,
        draw_split: bool = True,
        **kwargs,
    ):
        self.class_list = read_classes(root)
        self.class_names = self.class_list.names
        super().__init__(root, **kwargs)
        if 0 <= ignore_index < len(self.class_names):
            raise UserError(
                f"data.ignore_index={ignore_index} is the index of class "
                f"{self.class_names[ignore_index]!r} in classes.txt: pick a value that is no "
                f"class (default {classes.IGNORE_INDEX})"
            )
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must lie between 0 and 1, e.g. 0.1")
        self.file_ignore_index = ignore_index
        self.palette = palette_of(self.class_list)
        self.val_fraction, self.seed = val_fraction, seed
        self.split_dir = Path(split_dir) if split_dir else None
        self.draw_split = draw_split  # False: a trained network's split is read, never redrawn
        self.ids: dict[str, list[str]] | None = None

    def split_lists(self) -> dict[str, list[str]]:
        """{"train": ids, "val": ids}: DIR/train.txt and val.txt when present (one of them:
        the other split is every other id), else the lists in split_dir, else a seeded split
        written there."""
        images, _ = scan(self.root)
        given = {s: self.root / f"{s}.txt" for s in ("train", "val")}
        if not any(p.is_file() for p in given.values()) and self.split_dir is not None:
            given = {s: self.split_dir / f"{s}.txt" for s in ("train", "val")}
        fix = "write one image id (file name without extension) per line"
        lists = {s: read_lines(p, "split list", fix) for s, p in given.items() if p.is_file()}
        for split, ids in lists.items():
            unknown = sorted(set(ids) - set(images))
            if unknown:
                raise UserError(
                    f"{given[split]} names ids with no image in {self.root / 'images'}: "
                    f"{listed(unknown)}; fix the list or add the images"
                )
        if not lists and not self.draw_split and self.split_dir is not None:
            raise MissingFileError(
                f"the split this network was trained on is not in {self.split_dir} (train.txt, "
                "val.txt), and drawing it again from today's images could put training images "
                "in val: pass data.split_dir=<the training run's splits folder>"
            )
        if not lists:
            lists = self.seeded_split(sorted(images))
            if self.draw_split:
                self.write_split(lists)
        for split, other in (("train", "val"), ("val", "train")):
            if split not in lists:
                lists[split] = sorted(set(images) - set(lists[other]))
        for split, ids in lists.items():
            if not ids:
                raise UserError(f"the {split} split of {self.root} is empty: {fix}")
        return lists

    def seeded_split(self, ids: list[str]) -> dict[str, list[str]]:
        if len(ids) < 2:
            raise UserError(f"{self.root / 'images'} holds {len(ids)} image: a split needs two")
        shuffled = ids.copy()
        random.Random(self.seed).shuffle(shuffled)
        count = min(len(ids) - 1, max(1, round(self.val_fraction * len(ids))))
        return {"train": sorted(shuffled[count:]), "val": sorted(shuffled[:count])}

    def write_split(self, lists: dict[str, list[str]]) -> None:
        """The seeded split as train.txt / val.txt in split_dir, for evaluate.py and people."""
        if self.split_dir is None:
            return
        self.split_dir.mkdir(parents=True, exist_ok=True)
        for split, ids in lists.items():  # DDP ranks write the same lists: whole files only
            with written_atomically(self.split_dir / f"{split}.txt") as tmp:
                tmp.write_text("".join(f"{i}\n" for i in ids))

    def split_ids(self, stage: str) -> list[str]:
        if self.ids is None:
            self.ids = self.split_lists()
        return self.ids[stage]

    def reader(self, stage: str, ids: list[str], transform) -> FolderDataset:
        images, masks = scan(self.root)
        return FolderDataset(
            ids,
            images,
            masks,
            self.class_list,
            self.file_ignore_index,
            **self.reader_options(transform),
        )
