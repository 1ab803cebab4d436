"""Exact resume: a run killed after its first checkpoint and resumed == an uninterrupted run."""

import json

import pytest
import pytorch_lightning as pl
import torch

from deeplab.engine.pipeline import train
from deeplab.runtime.config import compose

# 4 train images, batch 2: two steps per epoch, a checkpoint after each epoch, 4 steps in all.
OVERRIDES = [
    "debug=smoke",
    "data=synthetic",
    "data.num_train=8",
    "data.num_val=3",
    "data.limit_train=4",
    "logger=csv",
    "val_samples=0",
]


class Crash(pl.Callback):
    """Kill the run at the start of its second epoch, after the first checkpoint was written."""

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def weights(run_dir):
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return state["state_dict"], state["global_step"]


def scores(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k != "train_img_per_s"}


@pytest.mark.slow
def test_killed_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    cfg = compose("train", [*OVERRIDES, f"data_dir={tmp_path / 'data'}"])
    train(cfg, tmp_path / "full")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, tmp_path / "killed", callbacks=[Crash()])
    checkpoint = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 2

    resumed = compose(
        "train", [*OVERRIDES, f"data_dir={tmp_path / 'data'}", f"ckpt_path={checkpoint}"]
    )
    train(resumed, tmp_path / "resumed")

    full, full_step = weights(tmp_path / "full")
    again, again_step = weights(tmp_path / "resumed")
    assert full_step == again_step == 4
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    assert scores(tmp_path / "full") == scores(tmp_path / "resumed")
