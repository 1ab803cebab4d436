"""paper.md §8 scores on confusion matrices built by hand."""

import math

import pytest
import torch

from deeplab.data.metrics import confusion_matrix, flatten, scores

NAMES = ["a", "b", "c"]


def test_scores_match_the_formulas_on_a_hand_built_matrix():
    # rows: truth, columns: prediction
    n = torch.tensor([[50, 5, 5], [10, 20, 0], [0, 10, 0]])
    out = scores(n, NAMES)
    t = [60, 30, 10]
    union = [60 + 60 - 50, 30 + 35 - 20, 10 + 5 - 0]
    iou = [50 / union[0], 20 / union[1], 0 / union[2]]
    assert out["pixel_acc"] == pytest.approx(100 * 70 / 100)
    assert out["mean_acc"] == pytest.approx(100 * (50 / 60 + 20 / 30 + 0 / 10) / 3)
    assert out["mIoU"] == pytest.approx(100 * sum(iou) / 3)
    assert out["fwIoU"] == pytest.approx(
        100 * sum(ti * i for ti, i in zip(t, iou, strict=True)) / 100
    )
    assert out["IoU"] == pytest.approx({k: 100 * v for k, v in zip(NAMES, iou, strict=True)})


def test_classes_absent_from_truth_and_prediction_are_left_out():
    n = torch.tensor([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    out = scores(n, NAMES)
    assert out["IoU"]["c"] is None
    present = [v for v in out["IoU"].values() if v is not None]
    assert out["mIoU"] == pytest.approx(sum(present) / len(present))
    assert out["mean_acc"] == pytest.approx(100 * (0.8 + 0.9) / 2)
    assert "val/IoU/c" not in flatten("val", out) and "val/IoU/a" in flatten("val", out)


def test_a_class_only_predicted_counts_as_zero():
    n = torch.tensor([[8, 0, 2], [0, 10, 0], [0, 0, 0]])
    out = scores(n, NAMES)
    assert out["IoU"]["c"] == 0.0
    assert out["mIoU"] == pytest.approx((80 + 100 + 0) / 3)


def test_confusion_matrix_ignores_255_and_sums_over_updates():
    cm = confusion_matrix(3)
    target = torch.tensor([[0, 1, 255], [2, 2, 1]])
    cm.update(torch.tensor([[0, 2, 1], [2, 0, 1]]), target)
    cm.update(torch.tensor([[1]]), torch.tensor([[0]]))
    expected = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1]])
    assert torch.equal(cm.compute(), expected)
    assert math.isclose(scores(cm.compute(), NAMES)["pixel_acc"], 100 * 3 / 6)


def test_wrong_shape_is_a_clear_error():
    with pytest.raises(ValueError, match="does not match 2 classes"):
        scores(torch.eye(3), ["a", "b"])
