"""predict.py: an image or a folder -> palette PNG masks and colour overlays."""

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.engine.pipeline import train
from deeplab.engine.prediction import SkippedImages, predict
from deeplab.runtime.config import compose

REPO = Path(__file__).resolve().parents[1]
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


def untrained_checkpoint(path):
    """A checkpoint of the MODEL network as initialised: enough to exercise prediction's I/O."""
    net = hydra.utils.instantiate(compose("predict", [*MODEL, "ckpt_path=x", "input=x"]).model)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, path)
    return path


@pytest.fixture
def mixed_folder(tmp_path):
    """x.jpg and x.png (one stem), z.png, and broken.jpg (a JPEG cut short); and a checkpoint."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("x.jpg", (20, 24)), ("x.png", (18, 30)), ("z.png", (16, 16))):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(images / name)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (images / "broken.jpg").write_bytes(jpeg.getvalue()[:300])  # a download cut short
    return images, untrained_checkpoint(tmp_path / "net.ckpt")


def test_same_stems_get_distinct_masks_and_an_unreadable_image_is_skipped(
    tmp_path, mixed_folder, capsys
):
    images, ckpt = mixed_folder
    cfg = compose("predict", [*MODEL, f"ckpt_path={ckpt}", f"input={images}"])
    with pytest.raises(SkippedImages, match=r"1 of 4 images could not be read") as err:
        predict(cfg, tmp_path / "out")
    assert re.search(r"broken\.jpg cannot be read .*remove it", str(err.value))
    assert err.value.skipped == [images / "broken.jpg"]
    masks = tmp_path / "out" / "masks"
    # broken.jpg sorts first: the images after it are still done, none overwrites another
    assert [p.name for p in err.value.written] == ["x_jpg.png", "x_png.png", "z.png"]
    assert sorted(p.name for p in masks.iterdir()) == ["x_jpg.png", "x_png.png", "z.png"]
    assert Image.open(masks / "x_png.png").size == (30, 18)  # each mask is its own image's
    overlays = sorted(p.name for p in (tmp_path / "out" / "overlays").iterdir())
    assert overlays == ["x_jpg.jpg", "x_png.jpg", "z.jpg"]
    log = capsys.readouterr().err
    assert "skipped: " in log and "predicting: 4/4 images (100%)" in log


@pytest.mark.slow
def test_predict_py_exits_non_zero_listing_skipped_images(tmp_path, mixed_folder):
    images, ckpt = mixed_folder
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "src" / "predict.py"), *MODEL, f"ckpt_path={ckpt}",
           f"input={images}", f"output_dir={out}", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2
    assert "1 of 4 images could not be read" in done.stderr and "broken.jpg" in done.stderr
    assert len(list((out / "masks").iterdir())) == 3
