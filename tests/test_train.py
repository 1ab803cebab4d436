"""End-to-end training runs (debug=smoke on the synthetic set) and their failure modes."""

import json
import re
from types import SimpleNamespace

import pytest
from hydra.errors import MissingConfigException

from deeplab.engine.callbacks import ProgressBar
from deeplab.engine.pipeline import evaluate, train
from deeplab.runtime.config import compose

SMOKE = ["debug=smoke", "data=synthetic", "data.num_train=8", "data.num_val=3"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def smoke(data_dir, *overrides, name="train"):
    logger = ["logger=csv"] if name == "train" else []
    return compose(name, [*SMOKE, *logger, f"data_dir={data_dir}", *overrides])


@pytest.fixture(scope="module")
def smoke_run(data_dir, tmp_path_factory):
    """One smoke run with the CRF, shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    metrics = train(smoke(data_dir, "crf=deeplab_vgg16"), run_dir)
    return run_dir, metrics


@pytest.mark.slow
def test_smoke_run_keeps_every_stage(smoke_run):
    run_dir, metrics = smoke_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved.keys() == metrics.keys()
    for prefix in ("val", "val_crf"):
        for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU"):
            assert 0 <= saved[f"{prefix}/{key}"] <= 100
        per_class = [v for v in saved[f"{prefix}/IoU"].values() if v is not None]
        assert saved[f"{prefix}/mIoU"] == pytest.approx(sum(per_class) / len(per_class))
        assert list(saved[f"{prefix}/IoU"]) == ["background", *list(saved[f"{prefix}/IoU"])[1:]]
    assert saved["params"] > 0 and saved["train_img_per_s"] > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt"))
    assert (run_dir / "figure.png").is_file() and (run_dir / "confusion.png").is_file()
    assert len(list((run_dir / "predictions").glob("*_crf.png"))) == 2  # debug=smoke: 2 samples
    log = (run_dir / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    for column in ("train/loss", "val/mIoU", "lr-SGD/weight", "lr-SGD/classifier_bias"):
        assert column in log


@pytest.mark.slow
def test_demo_recipe_runs_every_stage_and_prints_the_table(tmp_path, capsys):
    """`make demo`'s own config (its recipe, smoke-sized): BN backbone, AdamW, CRF, table."""
    shrink = ["debug=smoke", "data.num_train=8", "data.num_val=3", f"data_dir={tmp_path}"]
    cfg = compose("train", ["experiment=demo", *shrink])
    assert cfg.model.backbone.name == "vgg16_bn" and cfg.optim.name == "adamw"
    metrics = train(cfg, tmp_path / "run")
    assert {"val/mIoU", "val_crf/mIoU"} <= metrics.keys()
    assert (tmp_path / "run" / "figure.png").is_file()
    printed = capsys.readouterr()
    assert "val_crf" in printed.out and "IoU diamond" in printed.out  # the final table
    # Not a terminal: plain progress lines (deeplab.runtime.progress), no control characters.
    assert "training: 4/4 steps (100%)" in printed.err and "loss " in printed.err
    assert "validation: " in printed.err and "\x1b" not in printed.err

    # Evaluating it with evaluate.py's defaults fails twice, each time naming the overrides that
    # fix it (network, then input normalization); with them it scores as the training run did.
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    data = ["data=synthetic", "data.root=${data_dir}/synthetic_demo", *shrink]
    overrides = [*data, f"ckpt_path={ckpt}", "val_samples=0"]
    for expected in ("backbone=vgg16_bn", "data.std=[58.395,57.12,57.375]"):
        with pytest.raises(ValueError) as error:
            evaluate(compose("evaluate", overrides), tmp_path / "eval")
        hints = re.findall(r'"([^"]+)"', str(error.value))
        assert expected in hints, str(error.value)
        overrides += hints
    scored = evaluate(compose("evaluate", overrides), tmp_path / "eval")
    assert scored["val/mIoU"] == pytest.approx(metrics["val/mIoU"])


@pytest.mark.slow
def test_non_finite_loss_stops_with_the_step(data_dir, tmp_path):
    cfg = smoke(data_dir, "optim.lr=1e12")
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step \d+"):
        train(cfg, tmp_path)


@pytest.mark.slow
def test_checkpoint_of_another_class_count_or_architecture_is_refused(
    smoke_run, data_dir, tmp_path
):
    ckpt = smoke_run[0] / "checkpoints" / "last.ckpt"
    voc = compose("evaluate", ["debug=smoke", f"data_dir={data_dir}", f"ckpt_path={ckpt}"])
    with pytest.raises(ValueError, match="trained for 7 classes, but this run's data set has 21"):
        evaluate(voc, tmp_path)
    other = smoke(data_dir, "model=aspp_l", f"ckpt_path={ckpt}", name="evaluate")
    with pytest.raises(ValueError, match='another model config: .*"model=largefov"'):
        evaluate(other, tmp_path)
    resume = smoke(data_dir, "model=aspp_l", f"ckpt_path={ckpt}")
    with pytest.raises(ValueError, match='another model config: .*"model=largefov"'):
        train(resume, tmp_path)


def test_unknown_config_names_list_the_valid_ones():
    with pytest.raises(MissingConfigException) as error:
        compose("train", ["model=largefvo"])
    assert "largefov" in str(error.value) and "aspp_l" in str(error.value)
    with pytest.raises(MissingConfigException, match="smoke"):
        compose("train", ["debug=smok"])


def test_the_live_bar_names_the_epoch_without_a_total():
    """max_steps runs have no epoch limit: Lightning <= 2.6.6 printed "Epoch 5/-2" (#21925)."""
    bar = ProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)
    assert bar._get_train_description(5).strip() == "Epoch 5"
