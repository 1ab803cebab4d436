"""W&B dashboards of a real table sweep (docs/wandb.md), read back from W&B's own offline run
files: a 2-row `experiment=table1` smoke multirun, its table logged by `tables.py --wandb`, one
checkpoint evaluated with `logger=wandb`, and a CRF search with `--wandb`.

The subprocesses run without any WANDB_* variable and with an empty HOME (no login, no .netrc):
the runs are offline because of the project's own rule, whatever the caller's environment."""

import csv
import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
import yaml
from conftest import REPO
from test_crf_search import probs_dir  # noqa: F401  (fixture: three small saved probability maps)
from test_tables import TABLES_PY, TINY
from wandb_records import OfflineRun, offline_runs

from deeplab.crf.search import main as crf_search
from deeplab.runtime.wandb_runs import RunIdentity, checkpoint_identity, identity, offline

ROWS = {"fov_4x4_r8", "largefov"}  # two rows of Table 1 keep the sweep short


def no_wandb_account(home) -> dict:
    """The caller's environment without W&B settings or credentials."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "HOME": str(home), "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "1"}


def run(args: list, env: dict) -> str:
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def logged_sweep(root) -> Path:
    """The sweep folder (named as Hydra names one), after the multirun, the table run and the
    evaluation of job 0's checkpoint (its folder: `<sweep>/../../../eval`)."""
    env = no_wandb_account(root / "home")
    sweep = root / "multirun" / "2026-12-03" / "05-20-00-000000"
    tiny = [o for o in TINY if not o.startswith("logger=")]
    run(
        [sys.executable, "src/train.py", "-m", "experiment=table1", *tiny, "logger=wandb",
         f"model={','.join(sorted(ROWS))}", f"data_dir={root / 'data'}",
         f"hydra.sweep.dir={sweep}"],
        env,
    )  # fmt: skip
    run([sys.executable, TABLES_PY, sweep, "--wandb"], env)
    run(  # job 0's checkpoint, with its model and table1's input normalization (torchvision's)
        [sys.executable, "src/evaluate.py", f"ckpt_path={sweep / '0/checkpoints/last.ckpt'}",
         "data=synthetic", "debug=smoke", "data.limit_val=1", "val_samples=0",
         f"model={model_of(sweep / '0')}", "data.mean=[123.675,116.28,103.53]",
         "data.std=[58.395,57.12,57.375]", f"data_dir={root / 'data'}", "logger=wandb",
         "logger.name=my evaluation", "logger.tags=[mine]", f"hydra.run.dir={root / 'eval'}"],
        env,
    )  # fmt: skip
    return sweep


def model_of(job_dir) -> str:
    overrides = (job_dir / ".hydra" / "overrides.yaml").read_text()
    return next(row for row in ROWS if f"model={row}" in overrides)


def train_runs(sweep) -> dict[str, OfflineRun]:
    """The training runs by job folder name."""
    runs = {r.path.parents[1].name: r for r in offline_runs(sweep)}
    return {job: r for job, r in runs.items() if job.isdigit()}


GROUP = "table1/2026-12-03/05-20-00-000000"  # experiment / the sweep folder after multirun/


def check_one_group_of_runs_named_by_their_rows(sweep):
    runs = train_runs(sweep)
    assert sorted(runs) == ["0", "1"]
    for job, r in runs.items():
        row = model_of(sweep / job)
        assert r.path.name.startswith("offline-run-")  # no account: offline
        assert (r.run.run_group, r.run.display_name, r.run.job_type) == (
            GROUP,
            f"model={row}",
            "train",
        )
        assert list(r.run.tags) == ["table1", "vgg16", row, "synthetic"]
        assert r.config["model"]["width_mult"] == 0.0625  # the resolved config is there too


def check_summaries_hold_metrics_json(sweep):
    for job, r in train_runs(sweep).items():
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        numbers = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
        assert {"val/mIoU", "val_crf/mIoU", "val/fwIoU", "params", "train_img_per_s"} <= set(
            numbers
        )
        assert {k: r.summary[k] for k in numbers} == pytest.approx(numbers, rel=1e-12)
        per_class = r.table("IoU per class")
        assert per_class["columns"] == ["class", "val/IoU", "val_crf/IoU"]
        assert per_class["data"] == [
            [name, iou, metrics["val_crf/IoU"][name]] for name, iou in metrics["val/IoU"].items()
        ]


def check_the_table_run_holds_the_built_table(sweep):
    (r,) = offline_runs(sweep / "table1_wandb")
    assert (r.run.run_group, r.run.display_name, r.run.job_type) == (GROUP, "table1", "table")
    assert set(r.run.tags) == {"table1", "vgg16", "synthetic", *ROWS}
    assert r.run.notes == (sweep / "table1.md").read_text()  # the markdown
    with open(sweep / "table1.csv") as f:
        header, *rows = csv.reader(f)
    table = r.table("table1")
    assert table["columns"] == header and table["data"] == rows
    measured = {row[-2]: row for row in rows if row[-1] == "ok"}  # by job folder
    assert sorted(measured) == ["0", "1"]
    for job, row in measured.items():
        miou = json.loads((sweep / job / "metrics.json").read_text())["val/mIoU"]
        assert row[header.index("mIoU")] == f"{miou:.2f}"
    chart = r.summary["table1 chart.path"]
    assert (r.path / "files" / chart).stat().st_size > 10_000
    assert (r.path / "files" / "table1.md").read_text() == r.run.notes


def check_the_evaluation_joins_its_checkpoints_group(sweep):
    (r,) = offline_runs(sweep.parents[2] / "eval")
    assert (r.run.run_group, r.run.job_type) == (GROUP, "evaluate")
    assert (r.run.display_name, list(r.run.tags)) == ("my evaluation", ["mine"])  # the user's
    metrics = json.loads((sweep.parents[2] / "eval" / "metrics.json").read_text())
    assert r.summary["val/mIoU"] == pytest.approx(metrics["val/mIoU"], rel=1e-12)
    assert r.summary["checkpoint"] == metrics["checkpoint"]


def check_wandb_sync_of_the_job_folders_takes_the_whole_sweep(sweep, home):
    folders = sorted(glob.glob(f"{sweep}/*/wandb"))  # what the shell makes of <sweep>/*/wandb
    done = subprocess.run(
        [sys.executable, "-m", "wandb", "sync", "--dry-run", *folders],
        env=no_wandb_account(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    printed = done.stdout + done.stderr
    assert done.returncode == 0 and "Would sync 3 run(s)" in printed, printed  # 2 jobs + table


@pytest.mark.slow
def test_a_smoke_table_sweep_in_wandb(tmp_path):
    """One test, so that the sweep runs once however the suite is split across workers."""
    sweep = logged_sweep(tmp_path)
    check_one_group_of_runs_named_by_their_rows(sweep)
    check_summaries_hold_metrics_json(sweep)
    check_the_table_run_holds_the_built_table(sweep)
    check_the_evaluation_joins_its_checkpoints_group(sweep)
    check_wandb_sync_of_the_job_folders_takes_the_whole_sweep(sweep, tmp_path / "home")


@pytest.mark.slow
def test_the_crf_search_logs_its_scored_settings(probs_dir, monkeypatch):  # noqa: F811
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(probs_dir / "home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert offline()
    out = probs_dir / "search.json"
    report = crf_search(
        [str(probs_dir), "crf.backend=torch", "--bi-w", "0.5", "5", "--bi-xy-std", "20",
         "--bi-rgb-std", "10", "--no-fine", "--out", str(out), "--wandb",
         "--wandb-group", GROUP]
    )  # fmt: skip
    wandb.teardown()  # finish() can return before W&B's core has written the file: wait for it
    (r,) = offline_runs(probs_dir / "search_wandb")
    assert (r.run.run_group, r.run.job_type) == (GROUP, "crf_search")
    table = r.table("CRF settings")
    assert table["columns"] == ["stage", "bi_w", "bi_xy_std", "bi_rgb_std", "mIoU", "pixel_acc",
                                "seconds"]  # fmt: skip
    assert [row[:5] for row in table["data"]] == [
        [s["stage"], s["bi_w"], s["bi_xy_std"], s["bi_rgb_std"], s["mIoU"]]
        for s in report["results"]
    ]
    assert r.summary["best/mIoU"] == report["best"]["mIoU"]
    assert r.summary["no_crf/mIoU"] == report["unary"]["mIoU"]


def hydra_job(folder, mode: str, overrides: list[str], choices: dict) -> None:
    """A job folder's .hydra/hydra.yaml with the fields Hydra records (as written by Hydra 1.3)."""
    record = {
        "mode": mode,
        "job": {"name": "train"},
        "overrides": {"task": overrides},
        "runtime": {"output_dir": str(folder), "choices": choices},
    }
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": record}))


def test_command_line_sweeps_name_the_runs_and_single_runs_have_their_own_group(tmp_path):
    sweep = tmp_path / "multirun" / "2026-12-03" / "06-00-00-000001"
    sweep.mkdir(parents=True)
    command_line = {"hydra": {"overrides": {"task": ["seed=0,1", "data=synthetic"]}}}
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(command_line))
    hydra_job(sweep / "1", "MULTIRUN", ["seed=1", "data=synthetic"], {"data": "synthetic"})
    assert identity(sweep / "1", "train") == RunIdentity(
        "train/2026-12-03/06-00-00-000001", "seed=1", "train", ["synthetic"]
    )
    single = tmp_path / "outputs" / "2026-12-03" / "06-01-00-000002"
    hydra_job(single, "RUN", ["experiment=demo"], {"experiment": "demo", "backbone": "vgg16_bn"})
    assert identity(single, "train") == RunIdentity(
        "demo/2026-12-03/06-01-00-000002", "experiment=demo", "train", ["demo", "vgg16_bn"]
    )
    evaluation = checkpoint_identity(single / "checkpoints" / "last.ckpt", tmp_path, "evaluate")
    assert evaluation.group == "demo/2026-12-03/06-01-00-000002"  # the checkpoint's run's group
    assert evaluation.job_type == "evaluate"
    elsewhere = checkpoint_identity(tmp_path / "weights.pth", tmp_path / "eval", "evaluate")
    assert elsewhere.group == "evaluate/eval"  # not from a Hydra run folder: its own group
