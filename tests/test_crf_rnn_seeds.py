"""experiments/crf_rnn_seeds.py (docs/crf-rnn.md, Measured): from a stage-1 run it trains the
control and stage 2 per seed with the overrides given (the control without the layer's own
keys), prints their metrics as the table, and reruns nothing that has its metrics.json."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

SMALL = ["data.num_train=8", "data.num_val=2", "trainer.max_steps=2", "logger=csv"]


def run(*args, cwd) -> str:
    done = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_the_seed_table_is_the_runs_metrics(tmp_path):
    stage1 = tmp_path / "stage1"
    run(
        REPO / "src" / "train.py",
        "experiment=demo",
        *SMALL,
        f"hydra.run.dir={stage1}",
        cwd=tmp_path,
    )
    out = tmp_path / "s2"
    script = REPO / "experiments" / "crf_rnn_seeds.py"
    args = [script, *SMALL, "crf_rnn.output_scale=true", "--stage1", stage1, "--out", out]
    printed = run(*args, "--seeds", "3", cwd=tmp_path)

    control = json.loads((out / "control_seed3" / "metrics.json").read_text())
    stage2 = json.loads((out / "stage2_seed3" / "metrics.json").read_text())
    first = json.loads((stage1 / "metrics.json").read_text())
    assert "val_net/mIoU" in stage2 and "val_net/mIoU" not in control  # layer only in stage 2
    assert (out / "stage2_seed3" / ".hydra").is_dir()
    recorded = (out / "stage2_seed3" / ".hydra" / "overrides.yaml").read_text()
    assert "crf_rnn.output_scale=true" in recorded and "seed=3" in recorded
    control_overrides = (out / "control_seed3" / ".hydra" / "overrides.yaml").read_text()
    assert "crf_rnn=none" in control_overrides and "crf_rnn." not in control_overrides
    row = next(line for line in printed.splitlines() if line.startswith("| 3 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    layer = stage2["val/mIoU"]
    assert cells[1] == f"{first['val/mIoU']:.2f} / {first['val_crf/mIoU']:.2f}"
    assert cells[2] == f"{control['val/mIoU']:.2f} / {control['val_crf/mIoU']:.2f}"
    assert cells[3] == (
        f"{stage2['val_net/mIoU']:.2f} / {stage2['val_crf/mIoU']:.2f} / {layer:.2f}"
    )
    assert cells[4] == f"{layer - first['val_crf/mIoU']:+.2f}"
    assert cells[5] == f"{layer - control['val_crf/mIoU']:+.2f}"

    before = (out / "stage2_seed3" / "metrics.json").stat().st_mtime_ns
    again = run(*args, "--seeds", "3", cwd=tmp_path)
    assert printed.count("\n+ ") == 2 and "\n+ " not in again  # nothing rerun
    assert [x for x in again.splitlines() if x.startswith("|")] == [
        x for x in printed.splitlines() if x.startswith("|")
    ]
    assert (out / "stage2_seed3" / "metrics.json").stat().st_mtime_ns == before
