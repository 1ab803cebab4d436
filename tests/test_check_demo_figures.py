"""experiments/check_demo_figures.py: CI fails when the docs' demo figures are not the measured."""

import importlib.util
import json

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location(
    "check_demo_figures", REPO / "experiments" / "check_demo_figures.py"
)
checker = importlib.util.module_from_spec(spec)
spec.loader.exec_module(checker)

MEASURED = {"val/mIoU": 72.4612, "val_crf/mIoU": 79.1963, "val/pixel_acc": 93.5449,
            "val_crf/pixel_acc": 95.3151, "val/IoU": {}}  # fmt: skip
README_ROW = (
    "| CPU demo, 50 synthetic val images | val mIoU **{}**, **{}** with the dense CRF; "
    "pixel accuracy {} / {}; 8 min on 2 CPU cores | 2026-12-07 | `make demo` |\n"
)
TRAINING_ROW = "| `make demo` | **{}** | **{}** | {} / {} | 8 min |\n"


def files(tmp_path, readme: tuple, training: tuple) -> list[str]:
    (tmp_path / "metrics.json").write_text(json.dumps(MEASURED))
    (tmp_path / "README.md").write_text("# Demo\n\n" + README_ROW.format(*readme))
    (tmp_path / "training.md").write_text("| | a | b | c | d |\n" + TRAINING_ROW.format(*training))
    return [str(tmp_path / name) for name in ("metrics.json", "README.md", "training.md")]


def test_the_measured_figures_pass_at_the_digits_written(tmp_path, capsys):
    argv = files(tmp_path, ("72.46", "79.20", "93.54", "95.32"), ("72.46", "79.20", "93.5", "95.3"))
    assert checker.main(argv) == 0
    assert "are the measured ones: val/mIoU 72.46, val_crf/mIoU 79.20" in capsys.readouterr().out


def test_a_stale_figure_fails_naming_the_file_and_the_figure(tmp_path, capsys):
    argv = files(tmp_path, ("74.05", "79.20", "93.54", "95.32"), ("72.46", "80.37", "93.5", "95.3"))
    assert checker.main(argv) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{tmp_path / 'README.md'}: val/mIoU is written 74.05, make demo measured 72.46",
        f"{tmp_path / 'training.md'}: val_crf/mIoU is written 80.37, make demo measured 79.20",
    ]


def test_a_doc_without_its_demo_row_or_a_missing_run_is_an_error(tmp_path, capsys):
    metrics, readme, _ = files(tmp_path, ("1", "2", "3", "4"), ("1", "2", "3", "4"))
    (tmp_path / "README.md").write_text("no figures here\n")
    for argv, message in (
        ([metrics, readme], "README.md holds 0 rows of demo figures, not 1"),
        ([str(tmp_path / "absent.json"), readme], "absent.json does not exist: run `make demo`"),
    ):
        with pytest.raises(SystemExit) as stopped:
            checker.main(argv)
        assert stopped.value.code == 2 and message in capsys.readouterr().err


def test_the_shipped_docs_hold_one_demo_row_each():
    for doc in ("README.md", "docs/training.md"):
        assert len(checker.written_figures((REPO / doc).read_text(), doc)) == 4
