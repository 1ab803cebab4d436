"""CRF tuning on saved probabilities: the .npz format, the grid search and the Hydra app."""

import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console

from deeplab.crf import (
    DenseCRF,
    load_probabilities,
    probability_files,
    refine_many,
    save_probabilities,
)
from deeplab.crf.search import confusion, main
from deeplab.runtime.progress import Progress

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread (conftest)

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def two_squares(seed: int, size=(40, 48)):
    """A dark image with a bright square (class 1), its truth, and a blurry noisy softmax."""
    rng = np.random.default_rng(seed)
    h, w = size
    image = np.full((h, w, 3), 40, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    image[8:28, 10:34] = 200
    mask[8:28, 10:34] = 1
    mask[:, :2] = 255
    logits = rng.normal(0, 1.0, (3, h, w)).astype(np.float32)
    logits[0] += 1.5 * (mask != 1)
    logits[1] += 1.5 * (mask == 1)
    probs = np.exp(logits) / np.exp(logits).sum(0)
    return image + rng.integers(0, 5, image.shape, dtype=np.uint8), probs, mask


@pytest.fixture
def probs_dir(tmp_path):
    for i in range(3):
        save_probabilities(tmp_path / f"img{i}", *two_squares(i))
    return tmp_path


def test_save_and_load_round_trip(probs_dir):
    image, probs, mask = two_squares(0)
    files = probability_files(probs_dir)
    assert [f.name for f in files] == ["img0.npz", "img1.npz", "img2.npz"]
    got_image, got_probs, got_mask = load_probabilities(files[0])
    assert np.array_equal(got_image, image) and np.array_equal(got_mask, mask)
    assert got_mask.dtype == np.int64 and got_probs.dtype == np.float32
    np.testing.assert_allclose(got_probs, probs, atol=1e-3)  # stored as float16


def test_bad_probability_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="save_probs"):
        probability_files(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no .npz"):
        probability_files(tmp_path)
    image, probs, mask = two_squares(0)
    with pytest.raises(ValueError, match="probs must be float"):
        save_probabilities(tmp_path / "x", image, probs[:, :-1], mask)
    np.savez(tmp_path / "bad.npz", image=image)
    with pytest.raises(ValueError, match="missing keys"):
        load_probabilities(tmp_path / "bad.npz")


def test_confusion_counts_and_skips_ignore():
    truth = np.array([[0, 1, 255], [2, 2, 1]])
    pred = np.array([[0, 2, 1], [2, 1, 1]])
    n = confusion([pred], [truth], 3)
    assert n.tolist() == [[1, 0, 0], [0, 1, 1], [0, 1, 1]]


def test_grid_search_finds_a_setting_that_beats_no_crf(probs_dir, capsys):
    out = probs_dir / "search.json"
    report = main(
        [str(probs_dir), "crf.backend=torch", "--bi-w", "0.5", "5", "--bi-xy-std", "20",
         "--bi-rgb-std", "10", "--fine-steps", "1", "5", "2", "--out", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "| stage | bi_w |" in printed and "Best: bi_w=" in printed
    saved = json.loads(out.read_text())
    assert saved["best"] == report["best"]
    coarse = [r for r in saved["results"] if r["stage"] == "coarse"]
    fine = [r for r in saved["results"] if r["stage"] == "fine"]
    assert len(coarse) == 2 and len(fine) == 3 * 3 * 3 - 1  # the best coarse point is not rerun
    assert saved["best"]["mIoU"] == max(r["mIoU"] for r in saved["results"])
    assert saved["best"]["mIoU"] > saved["unary"]["mIoU"]


def test_crf_eval_with_the_printed_overrides_scores_the_search_best(probs_dir, tmp_path, capsys):
    """The search tunes the CRF that the other tools run: the `crf_eval.py` command it prints
    (every CRF value, normalisation and backend included) scores exactly its best. The search runs
    on the synthetic setting (per-pixel normalisation, pos_xy_std 1), not on argparse defaults."""
    report = main(
        [str(probs_dir), "crf=synthetic", "crf.iterations=3", "--bi-w", "0.5", "5",
         "--bi-xy-std", "20", "--bi-rgb-std", "10", "--no-fine", "--out", str(tmp_path / "s.json")]
    )  # fmt: skip
    command = capsys.readouterr().out.split("the same score again:\n")[1].splitlines()[0]
    program, script, *overrides = shlex.split(command)
    assert (program, script) == ("python", "src/crf_eval.py")
    assert {"crf=synthetic", "crf.normalization=per_pixel", "crf.pos_xy_std=1.0"} <= set(overrides)
    assert report["fixed"]["normalization"] == "per_pixel"
    run = subprocess.run(
        [sys.executable, script, *overrides, f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["crf"]["backend"] == report["fixed"]["backend"]
    assert metrics["val_crf/mIoU"] == pytest.approx(report["best"]["mIoU"], abs=1e-9)
    assert metrics["val_crf/pixel_acc"] == pytest.approx(report["best"]["pixel_acc"], abs=1e-9)


def test_the_search_refuses_what_it_would_not_run(probs_dir, capsys):
    for args, message in (
        (["crf.bi_w=5"], "crf.bi_w is an axis of the search grid: give its values with --bi-w"),
        (["limit=3"], "'limit=3' is not a CRF setting"),
        (["crf=none"], "the CRF search needs a CRF"),
    ):
        with pytest.raises(SystemExit) as refused:
            main([str(probs_dir), *args])
        assert refused.value.code == 2
        assert capsys.readouterr().err.startswith(f"Error: {message}")


def without_timing(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in results]


def test_an_interrupted_search_resumes_to_the_uninterrupted_result(probs_dir, capsys):
    common = [str(probs_dir), "crf.backend=torch", "--limit", "1", "--bi-w", "0.5", "5",
              "--bi-rgb-std", "10", "--fine-steps", "1", "5", "2"]  # fmt: skip
    full = main([*common, "--bi-xy-std", "20", "--out", str(probs_dir / "full.json")])
    out = probs_dir / "resumed.json"
    # A fault at the second setting (an invalid value), after the first one was scored:
    with pytest.raises(SystemExit):  # the UserError's message alone, exit 2
        main([*common, "--bi-xy-std", "20", "-1", "--out", str(out)])
    assert "crf.bi_xy_std=-1.0 is invalid" in capsys.readouterr().err
    log = out.with_suffix(".jsonl")
    assert len(log.read_text().splitlines()) == 2  # the header and the one setting scored
    with open(log, "a") as f:
        f.write('{"stage": "coarse", "bi_w": 5.0, "bi_')  # a record cut off by a kill
    capsys.readouterr()

    resumed = main([*common, "--bi-xy-std", "20", "--out", str(out)])
    printed = capsys.readouterr()
    assert "1 settings already scored" in printed.out
    assert printed.out.count("[coarse]") == 1 and printed.out.count("[fine]") == 26  # rest only
    assert without_timing(resumed["results"]) == without_timing(full["results"])
    assert without_timing([resumed["best"]]) == without_timing([full["best"]])
    assert len(log.read_text().splitlines()) == 1 + 2 + 26
    progress = [line for line in printed.err.splitlines() if line.startswith("CRF search, coarse")]
    assert progress[-1].startswith("CRF search, coarse grid: 2/2 settings (100%)")
    assert "best mIoU" in progress[-1]

    with pytest.raises(SystemExit) as refused:  # a UserError: its message alone, exit 2
        main([*common, "--bi-xy-std", "20", "--out", str(out), "crf.iterations=5"])
    assert refused.value.code == 2
    assert re.search("another search .*iterations.*--restart", capsys.readouterr().err)
    again = main([*common, "--bi-xy-std", "20", "--no-fine", "--out", str(out), "--restart"])
    assert capsys.readouterr().out.count("[coarse]") == 2  # --restart scores everything again
    assert without_timing(again["results"]) == without_timing(full["results"][:2])


@pytest.mark.parametrize("backend", ["torch", "pydensecrf"])
def test_refine_many_reports_every_image_to_the_progress_display(backend):
    images, probs, _ = zip(*(two_squares(i, (16, 20)) for i in range(3)), strict=True)
    console = Console(file=io.StringIO())
    with Progress("CRF", 3, "images", console=console) as bar:
        refine_many(DenseCRF(backend=backend), images, probs, num_workers=1, progress=bar.advance)
    assert console.file.getvalue().splitlines()[-1].startswith("CRF: 3/3 images (100%)")


def test_crf_configs_compose_to_the_released_settings():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for name, expected in (
            ("deeplab_vgg16", (4, 49, 5, 3, 3)),
            ("deeplab_resnet101", (4, 67, 3, 3, 1)),
        ):
            cfg = compose("crf_eval", overrides=[f"crf={name}", "probs_dir=x", "crf.backend=torch"])
            crf = instantiate(cfg.crf)
            assert isinstance(crf, DenseCRF) and crf.backend == "torch" and crf.iterations == 10
            assert (crf.bi_w, crf.bi_xy_std, crf.bi_rgb_std, crf.pos_w, crf.pos_xy_std) == expected
        assert compose("crf_eval", overrides=["crf=none", "probs_dir=x"]).crf is None


@pytest.mark.slow
def test_crf_eval_multirun_writes_metrics_per_job(probs_dir, tmp_path):
    sweep = tmp_path / "sweep"
    cmd = [
        sys.executable, str(REPO / "src" / "crf_eval.py"), "-m", f"probs_dir={probs_dir}",
        "crf=deeplab_vgg16", "crf.backend=torch", "crf.bi_xy_std=20", "crf.bi_w=0.5,5",
        f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True, env=env)
    metrics = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert [m["crf"]["bi_w"] for m in metrics] == [0.5, 5.0]
    for m in metrics:
        assert m["num_images"] == 3 and {"val/mIoU", "val_crf/mIoU", "val_crf/IoU"} <= set(m)
    assert metrics[1]["val_crf/mIoU"] > metrics[1]["val/mIoU"]


def test_a_score_log_holds_the_scores_of_exactly_these_probabilities(probs_dir, capsys):
    """Saved again under the same names, the probabilities once got the old log's best."""
    common = [str(probs_dir), "--limit", "1", "crf.backend=torch", "--bi-w", "5",
              "--bi-xy-std", "20", "--bi-rgb-std", "10", "--no-fine",
              "--out", str(probs_dir / "s.json")]  # fmt: skip
    main(common)
    save_probabilities(probs_dir / "img0", *two_squares(7))  # same name, other content
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main(common)
    assert refused.value.code == 2
    assert re.search(r"another search \(different content\).*--restart", capsys.readouterr().err)


def test_a_mask_value_above_the_class_count_is_one_message(tmp_path, capsys):
    image, probs, mask = two_squares(0)
    mask[5, 5] = 9
    save_probabilities(tmp_path / "img0", image, probs, mask)
    with pytest.raises(SystemExit) as refused:
        main([str(tmp_path), "crf.backend=torch", "--bi-w", "5", "--no-fine"])
    err = capsys.readouterr().err
    assert refused.value.code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'img0.npz'}: its mask holds values [9], neither one of its 3" in err


def test_a_text_file_named_npz_is_not_said_to_hold_pickled_data(tmp_path):
    (tmp_path / "x.npz").write_text("just some notes\n")
    with pytest.raises(
        ValueError, match=r"x.npz cannot be read \(not an .npz archive: not a zip file\)"
    ):
        load_probabilities(tmp_path / "x.npz")
