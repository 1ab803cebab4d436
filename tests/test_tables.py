"""The table builder (experiments/tables.py): fixture sweeps in Hydra's exact output layout, then
real `-m experiment=table1` / `table2` multiruns on the synthetic set (slow)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from deeplab.tables import TABLES, make_table

TABLES_PY = REPO / "experiments" / "tables.py"


def write_job(sweep, num, table, group, choice, metrics=None, seed=0, pad_to=None):
    """One job folder as Hydra writes it: .hydra/{config,hydra,overrides}.yaml (+ metrics.json)."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    config = {
        "table": table,
        "seed": seed,
        "model": {"width_mult": 0.125},
        "data": {"batch_size": 2},
        "tta": {"pad_to": pad_to},
    }
    config["trainer"] = {"max_steps": 3, "devices": 1, "accumulate_grad_batches": 1}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    hydra = {"hydra": {"runtime": {"choices": {group: choice, "data": "synthetic"}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{group}={choice}"]))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def metrics(miou, crf=None, params=20_500_000, speed=4.0):
    out = {"val/mIoU": miou, "params": params, "train_img_per_s": speed}
    if crf is not None:
        out["val_crf/mIoU"] = crf
    return out


def table_rows(markdown: str) -> list[list[str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


def test_table1_failed_and_missing_rows_are_never_zero(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "table1", "model", "fov_7x7_r4", metrics(61.5, 64.25, 134_350_000, 1.2))
    write_job(sweep, 1, "table1", "model", "fov_4x4_r4")  # no metrics.json: it failed
    write_job(sweep, 3, "table1", "model", "largefov", metrics(60.0, 65.0), pad_to=513)  # no job 2
    text = make_table(sweep)
    rows = table_rows(text)
    assert [r[:3] for r in rows] == [
        ["7x7", "4", "224"],
        ["4x4", "4", "128"],
        ["4x4", "8", "224"],
        ["3x3", "12", "224"],
    ]
    first, failed, missing, last = rows
    # Params, Speed, mIoU, mIoU+CRF: measured then paper.
    assert first[3:11] == ["134.3", "134.3", "1.20", "1.44", "61.50", "64.38", "64.25", "67.64"]
    assert failed[3:11:2] == ["failed"] * 4 and failed[4:11:2] == ["65.1", "2.90", "59.80", "63.74"]
    assert missing[3:11:2] == ["missing"] * 4 and missing[-1] == "missing"
    assert failed[-1] == "1/1 failed" and last[-1] == "ok" and last[-2] == "3"
    assert "0.00" not in " ".join(failed + missing)
    assert last[-3] == "width 0.125, 3 it, batch 2, scored padded to 513"  # the protocol too
    assert first[-3] == "width 0.125, 3 it, batch 2, scored unpadded"
    with open(sweep / "table1.csv") as f:
        assert len(list(csv.reader(f))) == 5
    assert (sweep / "table1.png").stat().st_size > 10_000


def test_table4_crf_row_reads_the_aspp_job_and_seeds_are_averaged(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "table4", "table4_row", "msc_coco_aug_aspp", metrics(70.0, 72.0))
    write_job(sweep, 1, "table4", "table4_row", "msc_coco_aug_aspp", metrics(72.0, 73.0), seed=1)
    write_job(sweep, 2, "table4", "table4_row", "base", metrics(50.0))
    rows = table_rows(make_table(sweep, out_dir=tmp_path / "out"))
    assert len(rows) == len(TABLES["table4"].rows) == 7
    base, aspp, aspp_crf = rows[0], rows[5], rows[6]
    assert base[:6] == [""] * 6 and base[6:8] == ["50.00", "68.72"]
    assert aspp[:6] == ["✓", "✓", "✓", "", "✓", ""] and aspp[6:8] == ["71.00 ± 1.41", "76.35"]
    assert aspp_crf[5] == "✓" and aspp_crf[6:8] == ["72.50 ± 0.71", "77.69"]
    assert aspp[-2] == "0 1"
    assert (tmp_path / "out" / "table4.md").is_file()


def test_a_metric_the_job_did_not_produce_says_so(tmp_path):
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "table3", "model", "aspp_l", metrics(55.0))  # crf=none: no val_crf/
    aspp_l = table_rows(make_table(sweep))[2]
    assert aspp_l[:5] == ["ASPP-L", "55.00", "68.96", "not run", "71.57"]


def test_bad_sweeps_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        make_table(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no Hydra job folders"):
        make_table(tmp_path / "empty")
    write_job(tmp_path / "mixed", 0, "table1", "model", "largefov", metrics(1.0))
    write_job(tmp_path / "mixed", 1, "table3", "model", "largefov", metrics(1.0))
    with pytest.raises(ValueError, match="different tables"):
        make_table(tmp_path / "mixed")
    write_job(tmp_path / "stray", 0, "table1", "model", "aspp_l", metrics(1.0))
    with pytest.raises(ValueError, match=r"model=\['aspp_l'\] are not rows of table1"):
        make_table(tmp_path / "stray")
    write_job(tmp_path / "untagged", 0, None, "model", "largefov", metrics(1.0))
    with pytest.raises(ValueError, match="no `table` key"):
        make_table(tmp_path / "untagged")
    assert make_table(tmp_path / "untagged", table="table1").count("| ok |") == 1
    cli = subprocess.run(
        [sys.executable, TABLES_PY, tmp_path / "empty"], capture_output=True, text=True
    )
    assert (
        cli.returncode == 2
        and "no Hydra job folders" in cli.stderr
        and "Traceback" not in cli.stderr
    )


# Smaller than debug=smoke alone: 2 steps of 2 images, one val image, no sample figures.
TINY = [
    "data=synthetic",
    "~data.aug",
    "debug=smoke",
    "logger=csv",
    "trainer.max_steps=2",
    "data.limit_train=4",
    "data.limit_val=1",
    "val_samples=0",
]


def multirun(experiment: str, sweep_dir, *extra: str) -> None:
    args = [
        sys.executable,
        "src/train.py",
        "-m",
        f"experiment={experiment}",
        *TINY,
        *extra,
        f"hydra.sweep.dir={sweep_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYDRA_")}
    env["DEEPLAB_DATA_DIR"] = str(Path(sweep_dir).parent / "data")  # nothing into the checkout
    run = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["table1", "table2"])
def test_real_multirun_prints_every_row_beside_the_paper(tmp_path, experiment):
    sweep = tmp_path / experiment
    multirun(experiment, sweep)
    spec = TABLES[experiment]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == sorted(
        p.name for p in sweep.iterdir() if p.is_dir()
    )
    cli = subprocess.run([sys.executable, TABLES_PY, sweep], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    rows = table_rows(cli.stdout)
    assert len(rows) == len(spec.rows)
    for row, paper_row in zip(rows, spec.rows, strict=True):
        assert row[-1] == "ok"
        assert row[-3] == "width 0.0625, 2 it, batch 2, scored padded to 513"
        cells = row[len(spec.columns) : -3]
        measured, paper = cells[0::2], cells[1::2]
        assert paper == [f"{paper_row.paper[m.name]:.{m.digits}f}" for m in spec.measures]
        assert all(
            0.0 <= float(v) <= 100.0
            for v, m in zip(measured, spec.measures, strict=True)
            if "mIoU" in m.name
        )
    assert (sweep / f"{experiment}.png").is_file() and (sweep / f"{experiment}.csv").is_file()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"[1, 2]", r"metrics .*0/metrics.json holds a JSON list, not the object"),
        (b'{"val/mIoU": "high"}', r"0/metrics.json: val/mIoU is 'high', not a number"),
        (b'{"val/mIoU": 6\xe9}', r"0/metrics.json cannot be read \(UnicodeDecodeError"),
    ],
    ids=["list", "string", "latin-1"],
)
def test_a_malformed_metrics_json_is_one_message_with_exit_2(tmp_path, content, match):
    sweep = tmp_path / "sweep"
    job = write_job(sweep, 0, "table1", "model", "largefov", metrics(1.0))
    (job / "metrics.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        make_table(sweep)
    cli = subprocess.run([sys.executable, TABLES_PY, sweep], capture_output=True, text=True)
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1, cli.stderr
