"""RefineNet: parameter count (and describe.py), 1/4-resolution logits, block structure, BN."""

import pytest
import torch
from hydra.utils import instantiate
from test_pretrained import tv_resnet101
from torch import nn

from deeplab.engine.optimizer import build_sgd
from deeplab.models import RefineNet, assemble_refinenet, count_parameters
from deeplab.models.refinenet import RCU, ChainedResidualPooling, MultiResolutionFusion
from deeplab.models.table1_columns import format_table, table1_columns
from deeplab.runtime.config import compose
from deeplab.weights.pretrained import apply_plan, resnet_plan

RESNET = {"name": "resnet101", "pretrained": None}
W = 0.0625
FULL_SIZE = 118_052_437  # ResNet-101 42,500,160 + RefineNet-4..1 and the classifier


def meta(model: str, *overrides: str) -> nn.Module:
    """The full-size network as `model=...` on the command line configures it."""
    cfg = compose("describe", [f"model={model}", *overrides])
    with torch.device("meta"):
        return instantiate(cfg.model)


def meta_refinenet() -> RefineNet:
    return meta("refinenet")


def test_model_refinenet_picks_resnet101_and_has_the_released_size():
    assert compose("train", ["model=refinenet"]).model.backbone.name == "resnet101"
    assert compose("train", ["model=aspp_l"]).model.backbone.name == "vgg16"  # default kept
    net = meta_refinenet()
    assert count_parameters(net.backbone) == 42_500_160
    assert count_parameters(net) == FULL_SIZE


def test_describe_prints_refinenet_and_fcn8s_parameter_counts():
    rows = [{"model": m} | table1_columns(meta(m)) for m in ("refinenet", "fcn8s")]
    table = format_table(rows)
    assert "| refinenet | - | - | - | - | 118.05M | 81x81 |" in table
    assert "| fcn8s | - | - | - | - | 134.49M | 321x321 |" in table


@pytest.mark.parametrize(
    ("size", "logits"),
    [((321, 321), (81, 81)), ((500, 375), (126, 95)), ((320, 320), (81, 81)), ((33, 47), (9, 13))],
)
def test_logits_are_at_res2_resolution(size, logits):
    net = meta_refinenet().eval()
    assert net(torch.empty(1, 3, *size, device="meta")).shape == (1, 21, *logits)
    h, w = size
    assert logits == (-(-h // 2) // 2 + 1, -(-w // 2) // 2 + 1)  # the docstring's formula


def test_narrow_refinenet_computes_finite_logits_on_an_odd_size():
    net = assemble_refinenet(21, RESNET, width_mult=W).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 45, 37))
    assert y.shape == (1, 21, 12, 10) and torch.isfinite(y).all()
    assert y.abs().max() < 10  # the random-init ResNet does not explode (scaled residuals)


def test_block_structure_follows_the_configuration():
    paper = assemble_refinenet(3, RESNET, crp_stages=2, output_rcus=1, final_rcus=2, width_mult=W)
    released = assemble_refinenet(3, RESNET, width_mult=W)
    for net, crp, out in ((paper, 2, 1), (released, 4, 3)):
        assert list(net.blocks) == ["refine4", "refine3", "refine2", "refine1"]
        for block in net.blocks.values():
            assert len(block.crp.convs) == crp and len(block.output) == out
            assert [type(m) for m in block.adapt] == [nn.Conv2d, RCU, RCU]
    assert len(paper.final) == 2 and len(released.final) == 0
    widths = [b.adapt[0].out_channels for b in released.blocks.values()]
    assert widths == [32, 16, 16, 16]  # 512, 256, 256, 256 at width 1/16
    assert len(released.blocks.refine4.fusion.convs) == 0  # one path: passes through
    assert [c.out_channels for c in released.blocks.refine3.fusion.convs] == [16, 16]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in released.blocks.modules())


def test_fusion_upsamples_to_the_finer_path_and_crp_sums_the_chain():
    fusion = MultiResolutionFusion([2, 4])
    fine, coarse = torch.randn(1, 2, 9, 7), torch.randn(1, 4, 5, 4)
    assert fusion([fine, coarse]).shape == (1, 2, 9, 7)
    crp = ChainedResidualPooling(2, 2)
    for conv in crp.convs:
        nn.init.zeros_(conv.weight)
    x = torch.randn(1, 2, 6, 6)
    assert torch.equal(crp(x), x.relu())  # zero convs: only the ReLU'd main path remains
    rcu = RCU(2)
    nn.init.zeros_(rcu.conv2.weight)
    assert torch.equal(rcu(x), x)  # identity plus a zero residual


def test_frozen_bn_backbone_classifier_and_pretrained_plan():
    net = assemble_refinenet(21, RESNET, width_mult=W).train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not m.training and not p.requires_grad for m in bns for p in m.parameters())
    assert net.classifier_parameters() == [net.classifier.weight, net.classifier.bias]
    assert abs(net.classifier.weight.std().item() - 0.01) < 0.003
    full = meta_refinenet()
    plan = resnet_plan(full.backbone, "backbone.")
    apply_plan(full, tv_resnet101(1.0, "meta"), plan, ("fc.",), "torchvision resnet101")


def test_optimizer_runs_the_resnet_at_a_tenth_of_the_lr_even_under_msc():
    net = meta("refinenet", "model.msc=true", "model.width_mult=0.0625")
    groups = {g["name"]: g for g in build_sgd(net, 1e-3).param_groups}
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(
        {"weight": 1e-3, "bias": 2e-3, "classifier_weight": 1e-2, "classifier_bias": 2e-2}
        | {"backbone_weight": 1e-4}  # ResNet convs have no bias; its BN is frozen
    )
    backbone = [p for p in net.net.backbone.parameters() if p.requires_grad]
    assert {id(p) for p in groups["backbone_weight"]["params"]} == {id(p) for p in backbone}
    in_groups = sorted(id(p) for g in groups.values() for p in g["params"])
    assert in_groups == sorted(id(p) for p in net.parameters() if p.requires_grad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": {"name": "vgg16"}}, "built on resnet101"),
        ({"backbone": RESNET | {"dilation": 2}}, "unknown keys"),
        ({"backbone": RESNET, "widths": [256, 256]}, "model.widths"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        assemble_refinenet(21, width_mult=W, **kwargs)
