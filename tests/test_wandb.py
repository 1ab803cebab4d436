"""The real wandb, offline: a run directory holding the metrics and the mask overlay images."""

import os
import socket
import time

import pytest
import wandb
from wandb_records import OfflineRun

from deeplab.engine.loggers import wandb_logged_in, wandb_logger
from deeplab.engine.pipeline import train
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError
from deeplab.runtime.wandb_runs import REACH_TIMEOUT_S, offline


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


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))


def closed_port() -> int:
    with socket.socket() as probe:  # bound, never listening: a connection is refused at once
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("key", [None, "x" * 40], ids=["no-key", "no-network"])
def test_online_without_a_key_or_a_network_runs_offline_within_seconds(
    monkeypatch, no_credentials, capsys, key
):
    """WANDB_MODE=online once waited 107 s, then exited 1."""
    monkeypatch.setenv("WANDB_MODE", "online")
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed_port()}")
    started = time.monotonic()
    assert offline()
    assert time.monotonic() - started < REACH_TIMEOUT_S + 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logging offline instead" in err
    assert ("no W&B API key" if key is None else "cannot be reached") in err
    assert os.environ["WANDB_MODE"] == "offline"


def test_a_w_and_b_folder_that_cannot_be_written_is_one_message(monkeypatch, tmp_path):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "a-file" / "wandb"))
    with pytest.raises(UserError, match=r"WANDB_DIR=.*a-file/wandb cannot be written"):
        wandb_logger(str(tmp_path / "run"))
    with pytest.raises(UserError, match=r"hydra.run.dir=.*a-file/run cannot be written"):
        wandb_logger(str(tmp_path / "a-file" / "run"))
