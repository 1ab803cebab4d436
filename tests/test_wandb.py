"""The real wandb, offline: a run directory holding the metrics and the mask overlay images."""

import pytest
import wandb
from wandb_records import OfflineRun

from deeplab.engine.loggers import wandb_logged_in
from deeplab.engine.pipeline import train
from deeplab.runtime.config import compose


@pytest.mark.slow
def test_offline_run_dir_holds_metrics_and_mask_images(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = compose(
        "train",
        [
            "debug=smoke",
            "data=synthetic",
            "data.num_train=8",
            "data.num_val=3",
            "logger=wandb",
            "crf=deeplab_vgg16",
            f"data_dir={tmp_path / 'data'}",
        ],
    )
    metrics = train(cfg, tmp_path / "run")
    wandb.teardown()  # finish() can return before W&B's core has written the file: wait for it

    runs = list((tmp_path / "run").rglob("offline-run-*"))
    assert len(runs) == 1, runs
    run = OfflineRun.read(runs[0])  # the records of its run-<id>.wandb file
    logged = [row["val/mIoU"] for row in run.history if "val/mIoU" in row]
    assert logged and logged[-1] == pytest.approx(metrics["val/mIoU"], rel=1e-5)
    for key in ("train/loss", "lr-SGD/classifier_weight", "val_crf/mIoU"):
        assert any(key in row for row in run.history), key
    assert run.config["model"]["width_mult"] == 0.0625  # the resolved config
    images = [p.relative_to(runs[0]).as_posix() for p in runs[0].rglob("media/images/**/*.png")]
    assert any("val/overlays" in name for name in images), images
    assert any("confusion" in name for name in images), images


def test_offline_unless_logged_in(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert not wandb_logged_in()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()
