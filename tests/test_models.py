"""DeepLab networks: paper parameter counts, output stride 8, MSC, frozen BN, heads, errors."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import nn

from deeplab.models import MSC, AtrousConv2d, assemble_deeplab, count_parameters

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODELS = ("fov_7x7_r4", "fov_4x4_r4", "fov_4x4_r8", "largefov", "aspp_s", "aspp_l")
BACKBONES = ("vgg16", "vgg16_bn", "resnet101")
VGG = {"name": "vgg16", "pretrained": None}
RESNET = {"name": "resnet101", "pretrained": None}


def config(model: str, backbone: str, *overrides: str):
    """The model config as the command line composes it (`model=... backbone=...`)."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("describe", [f"model={model}", f"backbone={backbone}", *overrides])
        return cfg.model


def on_meta(cfg) -> nn.Module:
    with torch.device("meta"):
        return instantiate(cfg)


@pytest.mark.parametrize(
    ("model", "backbone", "millions"),
    [
        ("fov_7x7_r4", "vgg16", 134.35),
        ("fov_4x4_r4", "vgg16", 65.14),
        ("fov_4x4_r8", "vgg16", 65.14),
        ("largefov", "vgg16", 20.51),
        ("aspp_l", "vgg16", 37.88),
        ("aspp_l", "resnet101", 44.05),
    ],
)
def test_parameter_counts_match_the_paper(model, backbone, millions):
    net = on_meta(config(model, backbone))
    assert abs(count_parameters(net) / 1e6 - millions) < 0.01


def test_vgg16_bn_adds_a_batchnorm_per_conv_and_nothing_else():
    plain, bn = (count_parameters(on_meta(config("largefov", b))) for b in ("vgg16", "vgg16_bn"))
    assert bn - plain == 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)  # gamma and beta per channel


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("model", MODELS)
def test_full_size_logits_are_41x41_for_321_input(model, backbone):
    net = on_meta(config(model, backbone)).eval()
    assert net(torch.empty(2, 3, 321, 321, device="meta")).shape == (2, 21, 41, 41)


@pytest.mark.parametrize(("model", "backbone"), [("fov_4x4_r8", "vgg16"), ("aspp_s", "resnet101")])
def test_narrow_network_computes_41x41_logits(model, backbone):
    net = instantiate(config(model, backbone, "model.width_mult=0.0625")).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 3, 321, 321))
    assert y.shape == (1, 21, 41, 41) and torch.isfinite(y).all()


@pytest.mark.parametrize(("k", "rate"), [(4, 3), (4, 4), (3, 12), (7, 4), (2, 1)])
def test_atrous_conv_keeps_size_for_odd_and_even_kernels(k, rate):
    conv = AtrousConv2d(2, 3, k, rate=rate)
    assert conv(torch.randn(1, 2, 17, 20)).shape == (1, 3, 17, 20)


def test_msc_returns_fused_and_every_scale_in_training_and_fused_in_eval():
    net = assemble_deeplab(5, VGG, width_mult=0.0625, msc=True)
    x = torch.randn(1, 3, 97, 97)
    outs = net.train()(x)
    assert isinstance(outs, list) and len(outs) == 4
    # 0.75 (73 px, 10x10 logits) is trained resized to the scale-1 size, 0.5 at its own
    assert [tuple(o.shape[-2:]) for o in outs] == [(13, 13), (13, 13), (13, 13), (7, 7)]
    assert torch.equal(outs[0], torch.maximum(outs[1], outs[0]))  # max fusion >= scale 1
    with torch.no_grad():
        fused = net.eval()(x)
    assert isinstance(fused, torch.Tensor) and fused.shape == (1, 5, 13, 13)


def test_msc_is_switched_on_from_the_command_line():
    net = on_meta(config("largefov", "vgg16", "model.msc=true"))
    assert isinstance(net, MSC) and net.scales == (1.0, 0.75, 0.5)
    with pytest.raises(ValueError, match="including 1.0"):
        MSC(nn.Identity(), (0.5, 0.75))


def test_frozen_resnet_batchnorm_stays_eval_and_out_of_the_optimizer():
    net = assemble_deeplab(3, RESNET, rates=(6, 12), width_mult=0.0625, msc=True)
    net.train()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 104  # stem + 33 blocks x 3 + 4 projection shortcuts
    assert all(not m.training and not p.requires_grad for m in bns for p in m.parameters())
    before = bns[0].running_mean.clone()
    sum(y.sum() for y in net(torch.randn(1, 3, 33, 33))).backward()
    assert torch.equal(before, bns[0].running_mean)
    assert all(p.grad is None for m in bns for p in m.parameters())
    assert all(p.grad is not None for p in net.classifier_parameters())
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(p.requires_grad for m in convs for p in m.parameters())


def test_classifier_parameters_are_the_final_layers_with_paper_init():
    vgg = assemble_deeplab(21, VGG, rates=(6, 12, 18, 24), width_mult=0.125)
    fc8 = [b.fc8 for b in vgg.head.branches]
    assert vgg.classifier_parameters() == [p for c in fc8 for p in (c.weight, c.bias)]
    resnet = MSC(assemble_deeplab(21, RESNET, rates=(6, 12, 18, 24), width_mult=0.125))
    params = resnet.classifier_parameters()
    assert len(params) == 8 and params[0].shape == (21, 256, 3, 3)
    for weight, bias in zip(params[::2], params[1::2], strict=True):
        assert abs(weight.std().item() - 0.01) < 0.001 and not bias.any()


def test_vgg_branch_has_dropout_and_resnet_branch_is_one_conv():
    vgg = assemble_deeplab(21, VGG, width_mult=0.125)
    assert [type(m).__name__ for m in vgg.head.branches[0]] == [
        "AtrousConv2d", "ReLU", "Dropout", "Conv2d", "ReLU", "Dropout", "Conv2d"
    ]  # fmt: skip
    assert vgg.head.branches[0].drop6.p == 0.5
    resnet = assemble_deeplab(21, RESNET, kernel_size=4, rates=(8,), width_mult=0.125)
    (conv,) = resnet.head.branches[0]
    assert conv.kernel_size == (4, 4) and conv.dilation == (8, 8)


def test_stride_placement_is_selectable():
    caffe = assemble_deeplab(2, RESNET | {"stride_in_1x1": True}, width_mult=0.0625)
    tv = assemble_deeplab(2, RESNET, width_mult=0.0625)
    assert caffe.backbone.layer2[0].conv1.stride == (2, 2)
    assert caffe.backbone.layer2[0].conv2.stride == (1, 1)
    assert tv.backbone.layer2[0].conv1.stride == (1, 1)
    assert tv.backbone.layer2[0].conv2.stride == (2, 2)
    assert tv.backbone.layer4[0].conv2.dilation == (4, 4) and tv.backbone.layer3[
        5
    ].conv2.stride == (1, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": {"name": "vgg19"}}, "model.backbone.name"),
        ({"backbone": VGG | {"freeze_bn": True}}, "unknown keys"),
        ({"backbone": VGG, "width_mult": 0}, "width_mult"),
        ({"backbone": VGG, "rates": []}, "model.rates"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        assemble_deeplab(21, **kwargs)
