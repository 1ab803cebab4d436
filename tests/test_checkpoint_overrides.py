"""Checkpoints drive evaluate.py and predict.py (design.md I11): a checkpoint records the overrides
that rebuild its network and data set, a converted Caffe file carries its own; `ckpt_path=X`
alone then evaluates and predicts, from any directory, and the command line still goes on top."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from omegaconf import OmegaConf

from deeplab.runtime.config import compose
from deeplab.weights.caffe.converter import convert, save
from deeplab.weights.caffe.released_layouts import vgg16_layers, write_caffemodel
from deeplab.weights.checkpoint_overrides import (
    run_overrides,
    saved_not_overridden,
    with_checkpoint_overrides,
)

SAVED = [
    "data=synthetic",
    "backbone=vgg16",
    "model=largefov",
    "++data.root='/data/synthetic'",
    "++data.limit_val=3",
    "++model.rates=[12]",
    "++model.backbone.name='vgg16'",
]


def env(tmp_path) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("HYDRA_", "WANDB_"))}
    return out | {"DEEPLAB_DATA_DIR": str(tmp_path / "data"), "WANDB_MODE": "offline"}


def test_the_command_line_replaces_what_it_sets_and_the_groups_it_switches():
    assert saved_not_overridden(SAVED, ["ckpt_path=x", "data.limit_val=1"]) == [
        s for s in SAVED if "limit_val" not in s
    ]
    # another data set: the checkpoint's data values go with its data option
    kept = saved_not_overridden(SAVED, ["ckpt_path=x", "data=voc"])
    assert not [s for s in kept if s.startswith(("data", "++data"))]
    assert "++model.rates=[12]" in kept
    # another backbone: its values go, the model's other values stay
    kept = saved_not_overridden(SAVED, ["backbone=resnet101"])
    assert "++model.backbone.name='vgg16'" not in kept and "++model.rates=[12]" in kept


def test_a_converted_caffe_file_brings_its_network_and_the_released_test_protocol(tmp_path):
    path = write_caffemodel(tmp_path / "vgg.caffemodel", vgg16_layers(0.0625, 5, head="aspp"))
    save(convert(path), tmp_path / "vgg.pth")
    argv = with_checkpoint_overrides(["evaluate.py", f"ckpt_path={tmp_path / 'vgg.pth'}", "-m"])
    assert argv[:2] == ["evaluate.py", "-m"] and argv[-1].startswith("ckpt_path=")
    assert {"model=aspp_l", "data.num_classes=5", "tta.pad_to=513"} <= set(argv)
    user = with_checkpoint_overrides(
        ["e.py", f"ckpt_path={tmp_path / 'vgg.pth'}", "tta.pad_to=null"]
    )
    assert "tta.pad_to=513" not in user and user[-1] == "tta.pad_to=null"


def test_an_unreadable_checkpoint_leaves_the_command_line_alone(tmp_path):
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    argv = ["evaluate.py", f"ckpt_path={tmp_path / 'bad.ckpt'}"]
    assert with_checkpoint_overrides(argv) == argv


@pytest.mark.slow
def test_evaluate_and_predict_need_only_the_checkpoint_from_another_directory(tmp_path):
    run = tmp_path / "run"
    train = [sys.executable, str(REPO / "src/train.py"), "debug=smoke", "data=synthetic"]
    train += ["logger=csv", "model.width_mult=0.125", "val_samples=0", f"hydra.run.dir={run}"]
    done = subprocess.run(train, cwd=REPO, env=env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    assert "data=synthetic" in torch.load(ckpt, weights_only=True)["deeplab"]["overrides"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = env(tmp_path) | {"DEEPLAB_DATA_DIR": str(elsewhere / "nothing-here")}
    evaluate = [sys.executable, str(REPO / "src/evaluate.py"), f"ckpt_path={ckpt}"]
    evaluate.append(f"hydra.run.dir={tmp_path / 'eval'}")
    done = subprocess.run(evaluate, cwd=elsewhere, env=clean, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    trained = json.loads((run / "metrics.json").read_text())
    scored = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert scored["val/mIoU"] == pytest.approx(trained["val/mIoU"], abs=1e-6)
    assert scored["val/IoU"].keys() == trained["val/IoU"].keys()  # the data set's class names
    images = next((tmp_path / "data" / "synthetic" / "JPEGImages").glob("val_*.jpg"))
    predict = [sys.executable, str(REPO / "src/predict.py"), f"ckpt_path={ckpt}", f"input={images}"]
    predict.append(f"hydra.run.dir={tmp_path / 'pred'}")
    done = subprocess.run(predict, cwd=elsewhere, env=clean, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "pred" / "masks" / f"{images.stem}.png").is_file()
    # an override that contradicts the network is still refused, naming the fix
    wrong = [*evaluate[:3], "model.rates=[6]", f"hydra.run.dir={tmp_path / 'wrong'}"]
    done = subprocess.run(wrong, cwd=elsewhere, env=clean, capture_output=True, text=True)
    assert done.returncode == 2 and "model.rates" in done.stderr


@pytest.mark.parametrize(
    ("given", "groups"),
    [
        (["data=synthetic"], ["data=synthetic", "backbone=vgg16", "model=largefov"]),
        (
            ["data=context", "model=aspp_l", "backbone=resnet101"],
            ["data=context", "backbone=resnet101", "model=aspp_l"],
        ),
    ],
)
def test_the_group_options_are_found_from_the_config_alone(given, groups):
    """Runs started from code (no Hydra record) still record their group options."""
    cfg = compose("train", given)
    model, data = (OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data"))
    assert run_overrides(model, data)[:3] == groups
