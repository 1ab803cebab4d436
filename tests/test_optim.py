"""DeepLab's parameter groups and the poly / step schedules (paper.md §2) on real networks."""

import hydra
import pytest
import torch

from deeplab.engine.optimizer import build_optimizer, build_scheduler, build_sgd
from deeplab.runtime.config import compose

BASE_LR = 1e-3
MULT = {"weight": 1, "bias": 2, "classifier_weight": 10, "classifier_bias": 20}


def network(*overrides):
    cfg = compose("train", ["data=synthetic", "model.width_mult=0.0625", *overrides])
    with torch.device("meta"):  # shapes only: grouping never reads the values
        return cfg, hydra.utils.instantiate(cfg.model)


@pytest.mark.parametrize("backbone", ["vgg16", "resnet101"])
def test_groups_follow_the_caffe_multipliers_and_skip_frozen_parameters(backbone):
    _, net = network("model=aspp_l", f"backbone={backbone}")
    optimizer = build_sgd(net, BASE_LR, momentum=0.9, weight_decay=5e-4)
    groups = {g["name"]: g for g in optimizer.param_groups}
    # ResNet convs have no bias and its BatchNorm is frozen, so only the classifier has biases.
    assert set(groups) == set(MULT) - ({"bias"} if backbone == "resnet101" else set())
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(BASE_LR * MULT[name])
        assert group["weight_decay"] == (0.0 if "bias" in name else 5e-4)
        assert group["momentum"] == 0.9
    classifier = {id(p) for p in net.classifier_parameters()}
    assert {id(p) for p in groups["classifier_weight"]["params"]} | {
        id(p) for p in groups["classifier_bias"]["params"]
    } == classifier
    in_groups = [id(p) for g in optimizer.param_groups for p in g["params"]]
    trainable = [id(p) for p in net.parameters() if p.requires_grad]
    assert sorted(in_groups) == sorted(trainable)  # each trainable parameter exactly once
    frozen = [p for p in net.parameters() if not p.requires_grad]
    assert bool(frozen) == (backbone == "resnet101")  # frozen BatchNorm left out


def lrs_at(schedule_name: str, steps: list[int], max_steps: int) -> dict[int, dict[str, float]]:
    cfg, net = network(f"schedule={schedule_name}")
    optimizer = build_sgd(net, BASE_LR)
    scheduler = build_scheduler(optimizer, hydra.utils.instantiate(cfg.schedule), max_steps)
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = {g["name"]: g["lr"] for g in optimizer.param_groups}
        optimizer.step()  # no gradients: a no-op, keeps the optimizer-then-scheduler order
        scheduler.step()
    return seen


@pytest.mark.parametrize("schedule", ["poly", "step"])
def test_lr_of_every_group_matches_the_formula_at_0_1000_and_the_last_step(schedule):
    max_steps = 6000
    seen = lrs_at(schedule, [0, 1000, 2000, max_steps - 1], max_steps)
    for step, lrs in seen.items():
        factor = (1 - step / max_steps) ** 0.9 if schedule == "poly" else 0.1 ** (step // 2000)
        for name, lr in lrs.items():
            assert lr == pytest.approx(BASE_LR * MULT[name] * factor, rel=1e-9), (step, name)
    if schedule == "step":  # Table 2: 1e-3 -> 1e-4 -> 1e-5 over 6K iterations
        assert seen[max_steps - 1]["weight"] == pytest.approx(1e-5 * BASE_LR / 1e-3)


def test_step_size_is_configurable_and_max_steps_is_required():
    cfg = compose("train", ["schedule=step", "schedule.step_size=500"])
    lam = hydra.utils.instantiate(cfg.schedule)(max_steps=2000)
    assert [lam(s) for s in (0, 499, 500, 1999)] == pytest.approx([1, 1, 0.1, 0.001])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="trainer.max_steps"):
        build_scheduler(opt, hydra.utils.instantiate(cfg.schedule), -1)


def test_a_network_without_classifier_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="classifier_parameters"):
        build_sgd(torch.nn.Conv2d(3, 2, 1), BASE_LR)


def test_adamw_keeps_the_groups_and_the_classifier_multiplier_is_a_knob():
    _, net = network("model=largefov")
    optimizer = build_optimizer(net, "adamw", BASE_LR, 0.9, 1e-4, classifier_lr_mult=1.0)
    assert isinstance(optimizer, torch.optim.AdamW)
    groups = {g["name"]: g for g in optimizer.param_groups}
    expected = {"weight": 1, "bias": 2, "classifier_weight": 1, "classifier_bias": 2}
    for name, group in groups.items():
        assert group["lr"] == pytest.approx(BASE_LR * expected[name])
        assert group["weight_decay"] == (0.0 if "bias" in name else 1e-4)
        assert group["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="optim.name='adam'"):
        build_optimizer(net, "adam", BASE_LR)
