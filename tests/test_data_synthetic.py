"""The synthetic set: VOC layout, same seed same bytes, atomic concurrent builds, content."""

import hashlib
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplab.data.classes import SYNTHETIC_CLASSES
from deeplab.data.datamodule import SyntheticDataModule
from deeplab.data.synthetic import build_synthetic

SMALL = dict(num_train=6, num_val=3, image_size=48)


def digest(root: Path) -> str:
    """One hash over every file's relative path and bytes."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = build_synthetic(tmp_path / "a", seed=3, **SMALL)
    b = build_synthetic(tmp_path / "b", seed=3, **SMALL)
    c = build_synthetic(tmp_path / "c", seed=4, **SMALL)
    assert digest(a) == digest(b) != digest(c)


def test_voc_layout_with_palette_masks(tmp_path):
    root = build_synthetic(tmp_path / "s", **SMALL)
    assert (root / "ImageSets/Segmentation/train.txt").read_text().split() == [
        f"train_{i:04d}" for i in range(6)
    ]
    mask = Image.open(root / "SegmentationClass/val_0000.png")
    image = Image.open(root / "JPEGImages/val_0000.jpg")
    assert mask.mode == "P" and image.mode == "RGB" and mask.size == image.size == (48, 48)


def test_existing_set_with_other_parameters_is_refused(tmp_path):
    build_synthetic(tmp_path / "s", **SMALL)
    build_synthetic(tmp_path / "s", **SMALL)  # same parameters: reused
    with pytest.raises(ValueError, match="delete the folder"):
        build_synthetic(tmp_path / "s", seed=1, **SMALL)


def _build(root):
    build_synthetic(root, num_train=20, num_val=5, image_size=48)


def test_concurrent_builders_do_not_collide(tmp_path):
    root = tmp_path / "shared"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build, args=(root,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]  # no temp folders left
    assert len(list((root / "JPEGImages").iterdir())) == 25


@pytest.fixture(scope="module")
def default_set(tmp_path_factory) -> SyntheticDataModule:
    """The set that `data=synthetic` builds (conf/data/synthetic.yaml's parameters)."""
    dm = SyntheticDataModule(str(tmp_path_factory.mktemp("data") / "synthetic"), num_workers=0)
    dm.setup()
    return dm


def test_default_set_content(default_set):
    dm = default_set
    assert (len(dm.train_set), len(dm.val_set)) == (240, 50)
    pixels = np.zeros(256, np.int64)
    sizes = []
    for i in range(len(dm.train_set)):
        mask = dm.train_set.load(i)[1]
        pixels += np.bincount(mask.ravel(), minlength=256)
        for label in set(np.unique(mask).tolist()) - {0, 255}:
            rows = np.flatnonzero((mask == label).any(axis=1))
            sizes.append((rows[-1] - rows[0] + 1) / mask.shape[0])
    classes = pixels[: len(SYNTHETIC_CLASSES)]
    assert (classes > 0.02 * classes.sum()).all()  # every shape well represented
    assert 0 < pixels[255] < 0.15 * pixels.sum()  # thin ignore band on boundaries
    assert min(sizes) < 0.1 and max(sizes) > 0.7  # objects from small to large


def test_default_set_batches(default_set):
    batch = next(iter(default_set.train_dataloader()))
    assert batch["image"].shape[1:] == (3, 112, 112) and batch["mask"].shape[1:] == (112, 112)
    val = next(iter(default_set.val_dataloader()))
    assert val["image"].shape == (1, 3, 128, 128)
