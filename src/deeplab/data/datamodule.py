"""LightningDataModules: one generic module over `SegmentationDataset`, one small subclass per
data set that only names its classes, on-disk layout and prepare command."""

import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from deeplab.data import classes
from deeplab.data.dataset import SegmentationDataset, read_ids
from deeplab.data.resumable import ResumableLoader
from deeplab.data.synthetic import build_synthetic
from deeplab.data.transforms import CAFFE_MEAN_RGB, UNIT_STD, pad_collate, train_transform
from deeplab.runtime.config import CONF_DIR
from deeplab.runtime.errors import MissingFileError, UserError

log = logging.getLogger(__name__)


def shared_defaults() -> dict:
    """The settings every data set shares, as conf/data/base/shared.yaml sets them: their
    defaults live in that file only, and data modules built in code take them from it."""
    values = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "data" / "base" / "shared.yaml"))
    values.pop("defaults", None)
    return values


SHARED = shared_defaults()


class SegmentationDataModule(pl.LightningDataModule):
    """Train split with DeepLab's augmentation, val split as whole images (batch 1 by default).

    Subclasses set `class_names`, `prepare_hint` and the `{split}` / `{id}` templates below,
    relative to `root`.
    """

    class_names: list[str] = []
    prepare_hint = ""
    list_template = ""
    image_template = ""
    mask_template = ""

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        batch_size: int = 10,
        val_batch_size: int = SHARED["val_batch_size"],
        crop_size: int = 321,
        random_scale: str = SHARED["random_scale"],
        scale_range: Sequence[float] = SHARED["scale_range"],
        scales: Sequence[float] = SHARED["scales"],
        flip: bool = SHARED["flip"],
        mean: Sequence[float] = CAFFE_MEAN_RGB,
        std: Sequence[float] = UNIT_STD,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        limit_train: int | None = SHARED["limit_train"],
        limit_val: int | None = SHARED["limit_val"],
        train_split: str = "train",
        val_split: str = "val",
        max_pixels: int | None = SHARED["max_pixels"],
    ):
        super().__init__()
        num_classes = len(self.class_names) if num_classes is None else num_classes
        if num_classes != len(self.class_names):
            raise UserError(
                f"data.num_classes={num_classes} but {type(self).__name__} has "
                f"{len(self.class_names)} classes; the value {num_classes} came from the command "
                f"line or from the checkpoint / converted file (ckpt_path), whose network then "
                f"belongs to a data set of {num_classes} classes: pick that data set (data=...), "
                "or drop a data.num_classes override"
            )
        self.root = Path(root)
        self.num_classes, self.ignore_index = num_classes, classes.IGNORE_INDEX
        self.palette = classes.voc_palette()
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.crop_size, self.max_pixels = crop_size, max_pixels
        self.augment = dict(
            scale_mode=random_scale, scale_range=tuple(scale_range), scales=tuple(scales), flip=flip
        )
        self.loader_args = dict(
            num_workers=num_workers,
            pin_memory=pin_memory,
            persistent_workers=persistent_workers and num_workers > 0,
        )
        self.limits = {"train": limit_train, "val": limit_val}
        self.splits = {"train": train_split, "val": val_split}
        self.train_set: SegmentationDataset | None = None
        self.val_set: SegmentationDataset | None = None

    def templates(self, stage: str) -> tuple[str, str, str]:
        """(list, image, mask) path templates of a stage, with `{split}` filled in."""
        split = self.splits[stage]
        return tuple(
            str(self.root / t.format(split=split, id="{id}"))
            for t in (self.list_template, self.image_template, self.mask_template)
        )

    def split_ids(self, stage: str) -> list[str]:
        """Ids of a stage's split; subclasses filter them (VOC drops val ids from train_aug)."""
        return read_ids(Path(self.templates(stage)[0]))

    def dataset(self, stage: str) -> SegmentationDataset:
        limit = self.limits[stage]
        ids = self.split_ids(stage)
        ids = ids[:limit] if limit is not None else ids
        transform = None
        if stage == "train":
            transform = train_transform(self.crop_size, self.mean, **self.augment)
        return self.reader(stage, ids, transform)

    def reader(self, stage: str, ids: list[str], transform) -> SegmentationDataset:
        """The dataset over `ids`; a data set without path templates overrides it."""
        _, image_template, mask_template = self.templates(stage)
        return SegmentationDataset(
            ids, image_template, mask_template, self.num_classes, **self.reader_options(transform)
        )

    def reader_options(self, transform) -> dict:
        """What every reader of this data module takes, whatever its paths: the normalisation,
        the training augmentation and the pixel limit (`data.max_pixels`)."""
        return dict(mean=self.mean, std=self.std, transform=transform, max_pixels=self.max_pixels)

    def check_root(self) -> None:
        if not self.root.is_dir():
            raise MissingFileError(
                f"data.root={self.root} does not exist. Create it with `{self.prepare_hint}` "
                f"(or point data.root / DEEPLAB_DATA_DIR at an existing copy)"
            )

    def setup(self, stage: str | None = None) -> None:
        self.check_root()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = self.dataset("train")
        if stage in (None, "fit", "validate", "test") and self.val_set is None:
            self.val_set = self.dataset("val")
        if stage in (None, "fit"):
            self.warn_overlap()

    def warn_overlap(self) -> None:
        """Warn when val images are also trained on: the val scores would be optimistic."""
        both = sorted(set(self.train_set.ids) & set(self.val_set.ids))
        if both:
            log.warning(
                "%d val ids of %s are also in the training split %s (%s): the val scores will "
                "be optimistic; remove them from one of the lists",
                len(both),
                self.templates("val")[0],
                self.templates("train")[0],
                ", ".join(both[:5]),
            )

    def train_dataloader(self) -> DataLoader:
        """Whole batches only, as Caffe never makes a partial one (the last few images of an
        epoch's shuffled order wait for the next epoch); resumes exactly from a mid-epoch
        checkpoint (SIGTERM)."""
        if len(self.train_set) < self.batch_size:
            raise UserError(
                f"data.batch_size={self.batch_size} is larger than the {len(self.train_set)} "
                f"training images under {self.root}: no whole batch can be made; lower "
                "data.batch_size (and raise trainer.accumulate_grad_batches to keep the batch)"
            )
        return ResumableLoader(
            self.train_set, self.batch_size, shuffle=True, drop_last=True, **self.loader_args
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, self.val_batch_size, collate_fn=pad_collate, **self.loader_args
        )


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012; `root` is the VOCdevkit folder. `aug=True` trains on train_aug (10,582:
    VOC train + SBD, masks from SegmentationClassAug/), with every val id removed from it."""

    class_names = classes.VOC_CLASSES
    prepare_hint = "python -m deeplab.data.prepare voc --root data/"
    list_template = "VOC2012/ImageSets/Segmentation/{split}.txt"
    image_template = "VOC2012/JPEGImages/{id}.jpg"
    mask_template = "VOC2012/SegmentationClass/{id}.png"

    def __init__(self, root: str, aug: bool = False, **kwargs):
        if aug:
            kwargs["train_split"] = "train_aug"
        super().__init__(root, **kwargs)
        self.aug = aug

    def templates(self, stage: str) -> tuple[str, str, str]:
        list_file, image, mask = super().templates(stage)
        if stage == "train" and self.aug:
            if not Path(list_file).is_file():
                raise MissingFileError(
                    f"data.aug=true needs {list_file} and VOC2012/SegmentationClassAug/: build "
                    "them from SBD with `python -m deeplab.data.prepare sbd --root data/`"
                )
            mask = str(self.root / "VOC2012/SegmentationClassAug/{id}.png")
        return list_file, image, mask

    def split_ids(self, stage: str) -> list[str]:
        ids = super().split_ids(stage)
        if stage == "train" and self.aug:
            val = set(super().split_ids("val"))
            kept = [i for i in ids if i not in val]
            if len(kept) < len(ids):
                log.warning("removed %d val ids from train_aug", len(ids) - len(kept))
            ids = kept
        return ids


class ContextDataModule(SegmentationDataModule):
    """PASCAL-Context, 59 classes + background on VOC2010 images; `root` is the VOCdevkit folder
    after `prepare context` (masks in VOC2010/SegmentationClassContext/)."""

    class_names = classes.CONTEXT_CLASSES
    prepare_hint = "python -m deeplab.data.prepare context --root data/"
    list_template = "VOC2010/ImageSets/SegmentationContext/{split}.txt"
    image_template = "VOC2010/JPEGImages/{id}.jpg"
    mask_template = "VOC2010/SegmentationClassContext/{id}.png"


class PersonPartDataModule(SegmentationDataModule):
    """PASCAL-Person-Part, 6 parts + background on VOC2010 images; `root` is the VOCdevkit folder
    after `prepare person_part` (masks in VOC2010/SegmentationPart/)."""

    class_names = classes.PERSON_PART_CLASSES
    prepare_hint = "python -m deeplab.data.prepare person_part --root data/"
    list_template = "VOC2010/ImageSets/PersonPart/{split}.txt"
    image_template = "VOC2010/JPEGImages/{id}.jpg"
    mask_template = "VOC2010/SegmentationPart/{id}.png"


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes fine annotations, 19 trainIds; `root` holds leftImg8bit/ and gtFine/ after
    `prepare cityscapes` (which writes *_gtFine_trainIds.png and lists/{train,val}.txt)."""

    @property
    def class_names(self) -> list[str]:
        return classes.cityscapes_classes()

    prepare_hint = "python -m deeplab.data.prepare cityscapes --root data/"
    list_template = "lists/{split}.txt"
    image_template = "leftImg8bit/{split}/{id}_leftImg8bit.png"
    mask_template = "gtFine/{split}/{id}_gtFine_trainIds.png"


class SyntheticDataModule(SegmentationDataModule):
    """The seeded toy set (see `synthetic.py`), built at `root` on first use, read as VOC."""

    class_names = classes.SYNTHETIC_CLASSES
    prepare_hint = "the synthetic set builds itself; check that data.root's parent is writable"
    list_template = "ImageSets/Segmentation/{split}.txt"
    image_template = "JPEGImages/{id}.jpg"
    mask_template = "SegmentationClass/{id}.png"

    def __init__(
        self,
        root: str,
        seed: int = 0,
        num_train: int = 240,
        num_val: int = 50,
        image_size: int = 128,
        max_objects: int = 4,
        **kwargs,
    ):
        kwargs.setdefault("crop_size", 112)
        super().__init__(root, **kwargs)
        self.build_args = dict(
            seed=seed,
            num_train=num_train,
            num_val=num_val,
            image_size=image_size,
            max_objects=max_objects,
        )

    def prepare_data(self) -> None:
        build_synthetic(self.root, **self.build_args)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # no-op when built; covers use outside a Trainer
        super().setup(stage)
