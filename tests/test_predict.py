"""predict.py: an image or a folder -> palette PNG masks and colour overlays."""

import shutil

import numpy as np
import pytest
from PIL import Image

from deeplab.config import compose
from deeplab.pipeline import predict, train

SMOKE = ["debug=smoke", "data=synthetic", "data.num_train=8", "data.num_val=3"]
MODEL = ["data=synthetic", "model.width_mult=0.0625"]  # predict.yaml has no debug group


@pytest.mark.slow
def test_folder_and_single_image_give_palette_masks_and_overlays(tmp_path):
    data = [f"data_dir={tmp_path / 'data'}"]
    train(compose("train", [*SMOKE, *data, "logger=csv"]), tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    images = tmp_path / "images"
    images.mkdir()
    for src in sorted((tmp_path / "data" / "synthetic" / "JPEGImages").glob("val_*.jpg"))[:2]:
        shutil.copy(src, images / src.name)

    cfg = compose(
        "predict", [*MODEL, *data, f"ckpt_path={ckpt}", f"input={images}", "crf=deeplab_vgg16"]
    )
    written = predict(cfg, tmp_path / "out")
    assert [p.name for p in written] == ["val_0000.png", "val_0001.png"]
    for path in written:
        mask = Image.open(path)
        source = Image.open(images / f"{path.stem}.jpg")
        assert mask.mode == "P" and mask.size == source.size
        assert np.asarray(mask).max() < 7
        overlay = Image.open(tmp_path / "out" / "overlays" / f"{path.stem}.jpg")
        assert overlay.size == source.size and overlay.mode == "RGB"

    one = compose(
        "predict",
        [
            *MODEL,
            *data,
            f"ckpt_path={ckpt}",
            f"input={images / 'val_0001.jpg'}",
            f"output_dir={tmp_path / 'one'}",
        ],
    )
    assert [p.name for p in predict(one, tmp_path / "unused")] == ["val_0001.png"]


def test_a_folder_without_images_is_a_clear_error(tmp_path):
    cfg = compose(
        "predict", ["data=synthetic", f"ckpt_path={tmp_path / 'x.ckpt'}", f"input={tmp_path}"]
    )
    with pytest.raises(FileNotFoundError, match="neither an image nor a folder"):
        predict(cfg, tmp_path)
