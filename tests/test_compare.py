"""experiment=compare: DeepLab-LargeFOV, ASPP-L, FCN-8s and RefineNet in one sweep, one table."""

import csv
import runpy
import subprocess
import sys

import pytest
from conftest import CONF_DIR, REPO
from hydra import compose, initialize_config_dir

from deeplab.tables import TABLES
from deeplab.tables.runs import load_jobs

MODELS = {"largefov": "vgg16", "aspp_l": "vgg16", "fcn8s": "vgg16", "refinenet": "resnet101"}
# debug=smoke on a 2-image, 64-pixel synthetic set without augmentation: every step sees the
# same batch, so the training loss must go down; the LR is low enough for random-init nets.
SMOKE = (
    "debug=smoke",
    "data=synthetic",
    "~data.aug",
    "logger=csv",
    "data.num_train=2",
    "data.num_val=1",
    "data.image_size=64",
    "data.crop_size=64",
    "data.random_scale=none",
    "data.flip=false",
    "optim.lr=1e-5",
    "data.std=[1.0,1.0,1.0]",  # random init, no weights' convention: the unscaled inputs 1e-5 suits
    "trainer.max_steps=5",
    "trainer.check_val_every_n_epoch=5",
)


def train_config(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", list(overrides), return_hydra_config=True)


def test_compare_sweeps_the_four_models_each_on_its_own_backbone():
    cfg = train_config("experiment=compare")
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.table == "compare"
    assert cfg.hydra.sweeper.params.model.split(",") == list(MODELS)
    weights = [f"imagenet_weights.{b}=/w/{b}.pth" for b in ("vgg16", "resnet101")]
    for model, backbone in MODELS.items():
        job = train_config("experiment=compare", f"model={model}", *weights)
        assert job.model.backbone.name == backbone
        assert job.hydra.runtime.choices.backbone == backbone
        assert job.model.backbone.pretrained == f"/w/{backbone}.pth"  # each its own file
    assert [row.choice for row in TABLES["compare"].rows] == list(MODELS)


def losses(job_dir) -> list[float]:
    with open(job_dir / "csv" / "version_0" / "metrics.csv") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row["train/loss"]]


@pytest.mark.slow
def test_compare_smoke_sweep_trains_all_four_and_prints_the_table(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        [sys.executable, "src/train.py", "experiment=compare", *SMOKE]
        + [f"data_dir={tmp_path / 'data'}", f"hydra.sweep.dir={sweep}"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    jobs = {job.choices["model"]: job for job in load_jobs(sweep)}
    assert list(jobs) == list(MODELS) and all(job.metrics for job in jobs.values())
    for model in ("fcn8s", "refinenet"):
        loss = losses(jobs[model].path)
        assert len(loss) == 5 and loss[-1] < 0.9 * loss[0], (model, loss)

    runpy.run_path(str(REPO / "experiments" / "tables.py"))["main"]([str(sweep)])
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]
    names = ["DeepLab-LargeFOV", "DeepLab-ASPP-L", "FCN-8s", "RefineNet"]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == names
    assert all(row.endswith("| ok |") for row in rows)
    assert (sweep / "compare.md").read_text() == table.rstrip("\n") + "\n"
