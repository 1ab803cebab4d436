"""Datamodules, reader and pipeline: the real VOC sample, bad input, configs, normalization."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from deeplab.data.datamodule import SyntheticDataModule, VOCDataModule
from deeplab.data.dataset import read_ids, write_mask
from deeplab.data.normalization import denormalize, normalize
from deeplab.data.synthetic import build_synthetic
from deeplab.data.transforms import CAFFE_MEAN_RGB, train_transform
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError


def voc(root, **kwargs) -> VOCDataModule:
    return VOCDataModule(str(root), num_workers=0, **kwargs)


# --- the real PASCAL VOC sample -------------------------------------------------------------


def test_voc_sample_splits_and_masks(voc_sample_root):
    dm = voc(voc_sample_root)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (12, 44)
    assert dm.class_names[15] == "person" and dm.num_classes == 21 and dm.ignore_index == 255
    assert dm.palette.shape == (256, 3) and dm.palette.dtype == np.uint8
    for dataset in (dm.train_set, dm.val_set):
        for i in range(len(dataset)):
            values = set(np.unique(dataset.load(i)[1]).tolist())
            assert values <= set(range(21)) | {255}


def test_voc_sample_train_batch_is_cropped_and_padded_with_255(voc_sample_root):
    torch.manual_seed(0)
    dm = voc(voc_sample_root, batch_size=4, random_scale="discrete", scales=[0.5], flip=False)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 321, 321) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (4, 321, 321) and batch["mask"].dtype == torch.int64
    # VOC images are <= 500 px, so at scale 0.5 every crop holds bottom/right padding
    assert (batch["mask"][:, -1, :] == 255).all() and (batch["mask"][:, :, -1] == 255).all()
    # padded with the exact mean colour, as Caffe pads in double: 0 once normalized
    assert (batch["image"][:, :, -1, :] == 0).all() and (batch["image"][:, :, :, -1] == 0).all()
    assert len(batch["name"]) == 4


def test_voc_sample_val_keeps_full_size_and_inverts(voc_sample_root):
    dm = voc(voc_sample_root, limit_val=2)
    dm.setup("validate")
    for batch, name in zip(dm.val_dataloader(), dm.val_set.ids, strict=True):
        original = np.array(Image.open(voc_sample_root / f"VOC2012/JPEGImages/{name}.jpg"))
        assert batch["image"].shape == (1, 3, *original.shape[:2])
        assert batch["mask"].shape == (1, *original.shape[:2])
        np.testing.assert_array_equal(denormalize(batch["image"][0], dm.mean, dm.std), original)


def test_official_list_counts(voc_sample_root):
    lists = voc_sample_root / "VOC2012/ImageSets/official"
    counts = [len(read_ids(lists / f"{s}.txt")) for s in ("train", "val", "train_aug")]
    assert counts == [1464, 1449, 10582]
    val = set(read_ids(lists / "val.txt"))
    assert not val & set(read_ids(lists / "train_aug.txt"))


def test_voc_aug_reads_segmentation_class_aug_and_drops_val_ids(voc_sample_root, tmp_path):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(voc_sample_root, root)
    lists = root / "VOC2012/ImageSets/Segmentation"
    val_id = read_ids(lists / "val.txt")[0]
    aug = read_ids(lists / "train_aug.txt")
    (lists / "train_aug.txt").write_text("\n".join([*aug, val_id]) + "\n")
    dm = voc(root, aug=True, limit_val=1)
    dm.setup("fit")
    assert len(dm.train_set) == len(aug) == 25 and val_id not in dm.train_set.ids
    assert "SegmentationClassAug" in str(dm.train_set.mask_path(aug[0]))


def test_voc_aug_without_sbd_says_how_to_build_it(voc_sample_root, tmp_path):
    root = tmp_path / "VOCdevkit"
    shutil.copytree(voc_sample_root, root)
    (root / "VOC2012/ImageSets/Segmentation/train_aug.txt").unlink()
    with pytest.raises(FileNotFoundError, match="prepare sbd"):
        voc(root, aug=True).setup("fit")


# --- bad input ------------------------------------------------------------------------------


@pytest.fixture
def tiny(tmp_path) -> Path:
    """A VOCdevkit holding a 4 + 3 image synthetic set (32 px) to break in various ways."""
    return build_synthetic(tmp_path / "VOCdevkit/VOC2012", num_train=4, num_val=3, image_size=32)


def tiny_dm(root: Path) -> VOCDataModule:
    return voc(root.parent, crop_size=24)


def test_mask_value_77_fails_in_val_loader_naming_the_file(tiny):
    bad = tiny / "SegmentationClass/val_0001.png"
    mask = np.array(Image.open(bad))
    mask[3, 3] = 77
    write_mask(mask, bad)
    dm = tiny_dm(tiny)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"val_0001\.png.*\[77\]"):
        list(dm.val_dataloader())


def test_training_takes_whole_batches_only(tiny):
    """Caffe never makes a partial batch: 4 images in batches of 3 give one batch per epoch."""
    dm = voc(tiny.parent, crop_size=24, batch_size=3)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.drop_last and len(loader) == 1
    assert [len(batch["image"]) for batch in loader] == [3]


def test_batch_larger_than_the_training_set_is_refused(tiny):
    dm = voc(tiny.parent, crop_size=24, batch_size=5)
    dm.setup("fit")
    with pytest.raises(UserError, match=r"data.batch_size=5 is larger than the 4 training images"):
        dm.train_dataloader()


def test_missing_root_names_path_and_prepare_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m deeplab.data.prepare voc"):
        voc(tmp_path / "nowhere").setup()


def test_listed_id_without_image(tiny):
    (tiny / "JPEGImages/train_0002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_0002\.jpg.*'train_0002'"):
        tiny_dm(tiny).setup("fit")


def test_empty_list(tiny):
    (tiny / "ImageSets/Segmentation/val.txt").write_text("\n")
    with pytest.raises(ValueError, match=r"val\.txt is empty"):
        tiny_dm(tiny).setup("validate")


def test_size_mismatch(tiny):
    write_mask(np.zeros((20, 32), np.uint8), tiny / "SegmentationClass/val_0000.png")
    dm = tiny_dm(tiny)
    dm.setup("validate")
    with pytest.raises(
        ValueError, match=r"val_0000\.jpg is 32x32 but mask .*val_0000\.png is 32x20"
    ):
        dm.val_set[0]


def test_corrupt_image(tiny):
    (tiny / "JPEGImages/val_0002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    dm = tiny_dm(tiny)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"val_0002\.jpg cannot be read"):
        dm.val_set[2]


def test_rgb_mask_is_refused(tiny):
    path = tiny / "SegmentationClass/val_0000.png"
    Image.open(path).convert("RGB").save(path)
    dm = tiny_dm(tiny)
    dm.setup("validate")
    with pytest.raises(ValueError, match=r"val_0000\.png has PIL mode RGB"):
        dm.val_set[0]


def test_num_classes_mismatch(tiny):
    with pytest.raises(ValueError, match="data.num_classes=21"):
        SyntheticDataModule(str(tiny), num_classes=21)


# --- pipeline -------------------------------------------------------------------------------


def test_normalize_round_trip_with_torchvision_stats():
    image = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for mean, std in [(CAFFE_MEAN_RGB, (1, 1, 1)), ((123.675, 116.28, 103.53), (58.4, 57.1, 57.4))]:
        tensor = normalize(image, mean, std)
        assert tensor.shape == (3, 7, 5)
        np.testing.assert_array_equal(denormalize(tensor, mean, std), image)
    assert torch.allclose(
        normalize(image, CAFFE_MEAN_RGB, (1, 1, 1))[0],
        torch.tensor(image[..., 0], dtype=torch.float32) - 122.675,
    )


def test_train_transform_scales_keep_labels_and_pad_with_mean_and_255():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (40, 60), dtype=np.uint8)
    for mode in ("uniform", "discrete", "none"):
        out = train_transform(64, CAFFE_MEAN_RGB, scale_mode=mode, scales=(0.5, 1.0))(
            image=image, mask=mask
        )
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == (64, 64)
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1, 2, 255}  # nearest: no new labels
        assert (out["mask"][-1] == 255).all()
        assert (out["image"][out["mask"] == 255] == np.float32(CAFFE_MEAN_RGB)).all()
    with pytest.raises(ValueError, match="data.random_scale='random'"):
        train_transform(64, CAFFE_MEAN_RGB, scale_mode="random")


# --- configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["voc", "context", "person_part", "cityscapes", "synthetic"])
def test_config_instantiates_and_has_contract_keys(name, tmp_path):
    cfg = compose("train", [f"data={name}", f"data_dir={tmp_path}"])
    keys = [
        "root",
        "num_classes",
        "batch_size",
        "val_batch_size",
        "crop_size",
        "num_workers",
        "pin_memory",
        "persistent_workers",
        "mean",
        "std",
        "limit_train",
        "limit_val",
    ]
    assert all(k in cfg.data for k in keys)
    dm = instantiate(cfg.data)
    assert dm.num_classes == len(dm.class_names) == cfg.data.num_classes
    assert str(dm.root).startswith(str(tmp_path))
