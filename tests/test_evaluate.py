"""evaluate.py: checkpoint -> metrics.json, with test-time wrappers, CRF, saved probabilities."""

import json

import hydra
import pytest
import torch

from deeplab.crf import load_probabilities, probability_files
from deeplab.engine.pipeline import evaluate, train
from deeplab.engine.test_time import MultiScaleFlip, SlidingWindow, resize
from deeplab.runtime.config import compose

SMOKE = ["debug=smoke", "data=synthetic", "data.num_train=8", "data.num_val=3"]


@pytest.fixture(scope="module")
def net():
    cfg = compose("train", [*SMOKE])
    torch.manual_seed(0)
    return hydra.utils.instantiate(cfg.model).eval()


@torch.no_grad()
def test_wrappers_reduce_to_the_plain_network(net):
    image = torch.randn(1, 3, 40, 56)
    plain = resize(net(image), image.shape[-2:])
    assert torch.allclose(MultiScaleFlip(net, [1.0], flip=False)(image), plain)
    assert torch.allclose(SlidingWindow(net, 7, tile=64)(image), plain, atol=1e-5)


@torch.no_grad()
def test_flip_and_tiles_cover_the_image(net):
    image = torch.randn(1, 3, 40, 56)
    flipped = MultiScaleFlip(net, [0.75, 1.0], flip=True)(image)
    assert torch.allclose(
        flipped, MultiScaleFlip(net, [0.75, 1.0], flip=True)(image.flip(-1)).flip(-1), atol=1e-5
    )
    tiled = SlidingWindow(net, 7, tile=24, overlap=0.5)
    assert tiled._starts(56) == [0, 12, 24, 32] and tiled._starts(20) == [0]
    assert tiled(image).shape == (1, 7, 40, 56) and torch.isfinite(tiled(image)).all()
    with pytest.raises(ValueError, match="overlap"):
        SlidingWindow(net, 7, tile=24, overlap=1.0)


@pytest.mark.slow
def test_checkpoint_scores_like_the_training_run_and_with_every_option(tmp_path):
    data = [f"data_dir={tmp_path / 'data'}"]
    trained = train(compose("train", [*SMOKE, *data, "logger=csv"]), tmp_path / "train")
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"

    plain = evaluate(compose("evaluate", [*SMOKE, *data, f"ckpt_path={ckpt}"]), tmp_path / "eval")
    for key in ("val/mIoU", "val/pixel_acc", "val/mean_acc", "val/fwIoU", "val/IoU"):
        assert plain[key] == pytest.approx(trained[key])  # same weights, same split
    assert (
        json.loads((tmp_path / "eval" / "metrics.json").read_text())["val/mIoU"]
        == plain["val/mIoU"]
    )

    speed = ["speed.atrous_mode=space_to_batch", "speed.channels_last=true"]
    fast = evaluate(
        compose("evaluate", [*SMOKE, *data, f"ckpt_path={ckpt}", *speed]), tmp_path / "fast"
    )
    assert fast["val/mIoU"] == pytest.approx(plain["val/mIoU"], abs=0.5)  # float rounding only

    options = [
        "tta.scales=[0.75,1.0]",
        "tta.flip=true",
        "tta.tile=96",
        "crf=deeplab_vgg16",
        f"save_probs={tmp_path / 'probs'}",
    ]
    full = evaluate(
        compose("evaluate", [*SMOKE, *data, f"ckpt_path={ckpt}", *options]), tmp_path / "tta"
    )
    assert {"val/mIoU", "val_crf/mIoU", "val_crf/IoU"} <= full.keys()
    files = probability_files(tmp_path / "probs")
    assert len(files) == 3
    image, probs, mask = load_probabilities(files[0])
    assert probs.shape == (7, *mask.shape) and image.shape[:2] == mask.shape
    assert probs.sum(0) == pytest.approx(1.0, abs=1e-2)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    cfg = compose("evaluate", [*SMOKE, f"data_dir={tmp_path}", f"ckpt_path={tmp_path / 'no.ckpt'}"])
    with pytest.raises(FileNotFoundError, match="no.ckpt does not exist"):
        evaluate(cfg, tmp_path)
