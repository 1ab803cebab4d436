"""The Lovász-softmax loss for a CRF-RNN layer's scores: at one-hot probabilities it is 1 - IoU
per class present, averaged; ignored pixels do not count; it has gradients."""

import pytest
import torch

from deeplab.engine.losses import LAYER_LOSSES, lovasz_softmax_loss
from deeplab.runtime.config import compose
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import UserError


def one_hot_scores(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Scores whose softmax is one-hot at `labels` to float precision."""
    return 100.0 * torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def mean_iou_loss(pred: torch.Tensor, truth: torch.Tensor, classes: int) -> float:
    """1 - IoU per class present in `truth`, averaged, counted pixel by pixel."""
    losses = []
    for c in range(classes):
        t, p = truth == c, pred == c
        if t.any():
            losses.append(1 - (t & p).sum().item() / (t | p).sum().item())
    return sum(losses) / len(losses)


def test_at_one_hot_probabilities_it_is_one_minus_iou():
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (2, 9, 11), generator=g)
    truth[truth == 3] = 2  # class 3 absent from the labels, present in the predictions
    pred = torch.where(torch.rand(truth.shape, generator=g) < 0.3, 3 - truth, truth)
    loss = lovasz_softmax_loss(one_hot_scores(pred, 4), truth)
    assert loss.item() == pytest.approx(mean_iou_loss(pred, truth, 4), abs=1e-5)
    assert lovasz_softmax_loss(one_hot_scores(truth, 4), truth).item() == pytest.approx(0, abs=1e-6)


def test_ignored_pixels_do_not_count_and_gradients_flow():
    g = torch.Generator().manual_seed(1)
    truth = torch.randint(0, 3, (1, 8, 8), generator=g)
    scores = torch.randn(1, 3, 8, 8, generator=g, requires_grad=True)
    wrong = one_hot_scores((truth + 1) % 3, 3)
    ignored = truth.clone()
    ignored[:, :4] = 255
    mixed = torch.cat([wrong[:, :, :4], scores[:, :, 4:]], dim=2)  # wrong where ignored
    loss = lovasz_softmax_loss(mixed, ignored)
    torch.testing.assert_close(loss, lovasz_softmax_loss(scores[:, :, 4:], truth[:, 4:]))
    loss.backward()
    assert torch.isfinite(scores.grad).all() and scores.grad[:, :, 4:].abs().sum() > 0
    assert scores.grad[:, :, :4].abs().sum() == 0


def test_the_layer_loss_is_a_checked_config_choice():
    assert set(LAYER_LOSSES) == {"cross_entropy", "lovasz_softmax"}
    check_config(compose("train", ["loss.crf_rnn_loss=lovasz_softmax"]))
    with pytest.raises(UserError, match="loss.crf_rnn_loss=lovasz_softmax"):
        check_config(compose("train", ["loss.crf_rnn_loss=dice"]))
