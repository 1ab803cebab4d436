"""experiments/gpu_report.py cannot rot: its CPU dry run fills every section with numbers, a stage
that fails or passes its cap is recorded while the next stage still reports, and stages the
budget cannot fit are skipped and marked so."""

import dataclasses
import importlib.util
import os
import re
import subprocess
import sys

import torch
from conftest import REPO

SCRIPT = REPO / "experiments" / "gpu_report.py"


def tables(text: str) -> dict[str, list[dict]]:
    """Section title -> rows of its markdown table, as dicts of column -> cell."""
    out = {}
    for block in text.split("\n## ")[1:]:
        title, *lines = block.splitlines()
        table = [line for line in lines if line.startswith("|")]
        if len(table) > 2:
            columns = [c.strip() for c in table[0].strip("|").split("|")]
            cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
            out[title] = [dict(zip(columns, row, strict=True)) for row in cells]
        else:
            out[title] = []
    return out


def number(cell: str) -> float:
    return float(re.match(r"[\d.]+", cell).group())


# What the GPU machine's image lacks and the report must do without (hydra and omegaconf travel
# as wheels: experiments/gpu_wheels.py): hidden from the dry run by a sitecustomize.
HIDDEN = ("albumentations", "wandb", "cityscapesscripts", "pydensecrf", "pydensecrf.densecrf")


def test_cpu_dry_run_reports_every_section_and_survives_a_capped_stage(tmp_path):
    """Run as on the GPU machine: without albumentations, wandb and pydensecrf."""
    out = tmp_path / "report.md"
    site = tmp_path / "site"
    site.mkdir()
    hide = "".join(f"sys.modules[{name!r}] = None\n" for name in HIDDEN)
    (site / "sitecustomize.py").write_text("import sys\n" + hide)
    path = os.pathsep.join([str(site), str(REPO / "src")])
    env = {**os.environ, "PYTHONPATH": path, "OMP_WAIT_POLICY": "passive"}
    # compile gets a 1 s cap it cannot meet: that stage is stopped, eval (after it) still runs
    command = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--cap", "compile=1"]
    result = subprocess.run(
        [*command, "--out", str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # rows are printed as they are measured, before their stage ends
    assert 0 <= result.stdout.index("[crf] size:") < result.stdout.index("== stage crf: done")
    text = out.read_text()
    assert "- device: CPU only" in text and "- torch " in text and "failed" not in text
    assert "the CRF reference, torch" in text
    sections = tables(text)
    stages = {row["stage"]: row["status"] for row in sections["Stages"]}
    assert stages["crf"] == stages["train"] == stages["eval"] == "done"
    assert stages["compile"].startswith("stopped at its 1 s cap")

    crf = sections["Dense CRF: torch on the device against the reference on one CPU core"]
    torch_rows = [
        row
        for row in crf
        if row["backend"] == "torch" and row["same labels as reference"] != "reference"
    ]
    assert [row["batch"] for row in torch_rows] == ["1", "8", "1", "8"]
    # pydensecrf is hidden: the reference is the torch backend on one CPU core
    assert [row["backend"] for row in crf if row["same labels as reference"] == "reference"] == [
        "torch",
        "torch",
    ]
    for row in torch_rows:
        assert number(row["ms / image"]) > 0 and number(row["x reference"]) > 0
        assert number(row["same labels as reference"]) >= 99.5
    crf_rnn = [row["backend"] for row in crf if row["backend"].startswith("CRF-RNN")]
    assert crf_rnn == ["CRF-RNN forward, 10 it", "CRF-RNN forward + backward, 5 it"] * 2
    losses = sections["Training loss on a fixed batch"]
    assert [row["finite"] for row in losses] == ["yes", "yes"]
    assert float(losses[1]["relative difference to fp32"]) < 0.05  # bf16 close to fp32
    train = sections["Training: ResNet-101 ASPP-L with MSC"]
    assert [row["variant"] for row in train] == ["fp32", "bf16-mixed", "bf16 + channels_last"]
    vgg = sections["Training: Table 1 VGG-16 rows"]
    assert len(vgg) == 8
    for row in train + vgg:
        assert number(row["img/s"]) > 0 and row["losses finite"] == "yes"
    evaluation = sections["Evaluation: ResNet-101 ASPP-L, one image at a time"]
    assert len(evaluation) == 9 and all(number(row["img/s"]) > 0 for row in evaluation)


def _load_script(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # its sibling imports: bench, bench_crf
    spec = importlib.util.spec_from_file_location("gpu_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_stage_is_recorded_and_stages_past_the_budget_are_skipped(
    tmp_path, monkeypatch, one_thread
):
    gpu_report = _load_script(monkeypatch)
    # a 0-pixel evaluation image fails for real (in the image resize), before any row
    profile = dataclasses.replace(gpu_report.TINY, eval_size=0, crf_sizes={"VOC": (30, 40, 21)})
    caps = {"eval": 60, "crf": 60}
    path = tmp_path / "report.md"
    report = gpu_report.Report(path, ["# GPU report"], gpu_report.sections(profile), caps)
    run = gpu_report.Run(torch.device("cpu"), profile, report)
    gpu_report.run_stages(run, ["eval", "crf"], budget_s=60, caps=caps)
    stages = {row["stage"]: row["status"] for row in tables(path.read_text())["Stages"]}
    assert stages["eval"].startswith("failed: ") and stages["crf"] == "done"
    crf = tables(path.read_text())[
        "Dense CRF: torch on the device against the reference on one CPU core"
    ]
    assert len(crf) == 5  # pydensecrf, torch at batch 1 and 8, CRF-RNN twice

    caps = dict(gpu_report.TINY.caps)
    path = tmp_path / "skipped.md"
    report = gpu_report.Report(path, ["# GPU report"], gpu_report.sections(profile), caps)
    run = gpu_report.Run(torch.device("cpu"), profile, report)
    gpu_report.run_stages(run, list(caps), budget_s=0, caps=caps)
    text = path.read_text()
    stages = {row["stage"]: row["status"] for row in tables(text)["Stages"]}
    assert set(stages.values()) == {"skipped: 0 s of the budget left"}
    assert text.count("(no rows)") == 5
