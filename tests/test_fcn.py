"""FCN-8s (and 16s / 32s): parameter count, input-size logits, crops, upsampling, staged init."""

import pytest
import torch
from hydra.utils import instantiate
from test_pretrained import tv_vgg16

from deeplab.models import FCN, assemble_fcn, count_parameters
from deeplab.models.fcn import crop_offsets
from deeplab.models.upsample import BilinearTransposed, ResizeConv, bilinear_kernel
from deeplab.runtime.config import compose
from deeplab.weights.networks import build_fcn
from deeplab.weights.pretrained import apply_plan, vgg16_fc_plan, vgg16_features_plan

VGG = {"name": "vgg16", "pretrained": None}
W = 0.0625


def meta_fcn(*overrides: str) -> FCN:
    """The full-size network as `model=fcn8s` on the command line configures it."""
    cfg = compose("describe", ["model=fcn8s", *overrides])
    assert cfg.model.backbone.name == "vgg16"  # fcn8s.yaml picks its backbone itself
    with torch.device("meta"):
        return instantiate(cfg.model)


def test_fcn8s_has_134_5m_parameters_counting_the_upsampling_filters():
    net = meta_fcn()
    vgg_convs = 14_714_688  # the 13 VGG-16 convolutions
    fc6, fc7 = 512 * 7 * 7 * 4096 + 4096, 4096 * 4096 + 4096
    scores = (4096 + 1) * 21 + (512 + 1) * 21 + (256 + 1) * 21  # score_fr, score_pool4, _pool3
    upsampling = 21 * 21 * (4 * 4 * 2 + 16 * 16)  # upscore2, upscore_pool4, upscore8 (frozen)
    assert count_parameters(net) == vgg_convs + fc6 + fc7 + scores + upsampling == 134_489_759
    frozen = sum(p.numel() for p in net.parameters() if not p.requires_grad)
    assert frozen == upsampling


@pytest.mark.parametrize("size", [(321, 321), (500, 375), (1, 1), (33, 47), (97, 130)])
@pytest.mark.parametrize("stage", [8, 16, 32])
def test_logits_have_the_input_size(stage, size):
    net = meta_fcn(f"model.stage={stage}").eval()
    assert net(torch.empty(2, 3, *size, device="meta")).shape == (2, 21, *size)


def test_crop_offsets_follow_the_reference_prototxts():
    assert crop_offsets(8) == (5, 9, 31)
    assert crop_offsets(16) == (5, 27)
    assert crop_offsets(32) == (19,)


def test_narrow_fcn_computes_zero_logits_at_init_and_names_its_score_layers():
    net = assemble_fcn(5, VGG, width_mult=W)
    with torch.no_grad():
        y = net.eval()(torch.randn(1, 3, 45, 38))
    assert y.shape == (1, 5, 45, 38) and not y.any()  # every score layer starts at zero (FCN)
    scores = [net.head.fc8, net.score_pool["pool4"], net.score_pool["pool3"]]
    assert net.classifier_parameters() == [p for c in scores for p in (c.weight, c.bias)]
    assert net.skip_scales == {"pool4": 1.0, "pool3": 1.0}
    assert assemble_fcn(5, VGG, width_mult=W, at_once=True).skip_scales["pool3"] == 1e-4


def test_msc_wraps_fcn_like_deeplab():
    net = assemble_fcn(3, VGG, width_mult=W, msc=True).train()
    outs = net(torch.randn(1, 3, 33, 33))
    # 0.75 is trained resized to the scale-1 size (Caffe MSC), 0.5 on its own grid
    assert [tuple(o.shape[-2:]) for o in outs] == [(33, 33), (33, 33), (33, 33), (17, 17)]
    assert net.classifier_parameters() == net.net.classifier_parameters()


def test_bilinear_kernel_is_fcn_surgery_filter():
    assert torch.allclose(bilinear_kernel(4)[0], torch.tensor([1, 3, 3, 1]) / 16)
    k = bilinear_kernel(16)
    assert torch.allclose(k, k.T) and k.max() == k[7, 7] == k[8, 8]


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_resize_conv_is_on_the_transposed_conv_grid(factor):
    x = torch.randn(1, 3, 5, 7)
    transposed, resize = BilinearTransposed(3, factor)(x), ResizeConv(3, factor)(x)
    assert transposed.shape == resize.shape == (1, 3, 6 * factor, 8 * factor)
    inner = (..., slice(factor, -factor), slice(factor, -factor))
    assert torch.allclose(transposed[inner], resize[inner], atol=1e-5)


@pytest.mark.parametrize(
    ("upsampling", "learn", "trainable"),
    [
        ("transposed", "none", [False, False, False]),
        ("transposed", "intermediate", [True, True, False]),
        ("transposed", "all", [True, True, True]),
        ("resize_conv", "none", [True, True, True]),  # the conv after the resize always learns
    ],
)
def test_upsampling_kind_and_what_learns(upsampling, learn, trainable):
    net = assemble_fcn(3, VGG, upsampling=upsampling, learn_upsampling=learn, width_mult=W)
    assert list(net.upscore) == ["2", "pool4", "8"]
    assert [all(p.requires_grad for p in m.parameters()) for m in net.upscore.values()] == trainable
    assert net(torch.randn(1, 3, 20, 27)).shape == (1, 3, 20, 27)


def test_pretrained_plan_fills_the_full_size_fcn_including_the_7x7_fc6():
    net = meta_fcn()
    plan = vgg16_features_plan(net.backbone, "backbone.") + vgg16_fc_plan(net.head, "head.")
    apply_plan(net, tv_vgg16(1.0, "meta"), plan, ("classifier.6.",), "torchvision vgg16")
    assert net.head.fc6.weight.shape == (4096, 512, 7, 7) and net.head.fc6.padding == (0, 0)


def test_pretrained_file_initialises_backbone_fc6_and_fc7(tmp_path):
    state = tv_vgg16(W)
    torch.save(state, tmp_path / "vgg16.pth")
    path = str(tmp_path / "vgg16.pth")
    net = build_fcn(21, VGG | {"pretrained": path}, width_mult=W)
    fc6 = state["classifier.0.weight"].reshape(net.head.fc6.weight.shape)
    assert torch.equal(net.head.fc6.weight, fc6)
    assert torch.equal(net.backbone.stages.stage5.conv5_3.weight, state["features.28.weight"])
    assert not net.head.fc8.weight.any()  # score_fr stays zero: not in the ImageNet file


def test_networks_read_no_weight_file():
    """deeplab.models builds; a weight file is refused there, read by deeplab.weights."""
    with pytest.raises(ValueError, match="read by the builders in deeplab.weights"):
        assemble_fcn(21, VGG | {"pretrained": "vgg16.pth"}, width_mult=W)


def test_staged_training_copies_the_previous_stage_and_keeps_new_skips_zero(tmp_path):
    fcn32 = assemble_fcn(4, VGG, stage=32, width_mult=W)
    with torch.no_grad():
        fcn32.head.fc8.weight.normal_()  # pretend it was trained
    ckpt = tmp_path / "fcn32s.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in fcn32.state_dict().items()}}, ckpt)
    fcn16 = build_fcn(4, VGG, stage=16, width_mult=W, init_from=str(ckpt))
    assert torch.equal(fcn16.head.fc8.weight, fcn32.head.fc8.weight)
    conv1_1 = [net.backbone.stages.stage1.conv1_1.weight for net in (fcn16, fcn32)]
    assert torch.equal(*conv1_1)
    assert not fcn16.score_pool["pool4"].weight.any()
    with pytest.raises(ValueError, match="not an earlier stage"):
        build_fcn(4, VGG, stage=16, width_mult=2 * W, init_from=str(ckpt))
    with pytest.raises(FileNotFoundError, match="model.init_from"):
        build_fcn(4, VGG, stage=16, width_mult=W, init_from=str(tmp_path / "none.ckpt"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbone": {"name": "resnet101"}}, "built on vgg16"),
        ({"backbone": VGG | {"freeze_bn": True}}, "unknown keys"),
        ({"backbone": VGG, "stage": 4}, "model.stage"),
        ({"backbone": VGG, "upsampling": "nearest"}, "model.upsampling"),
        ({"backbone": VGG, "learn_upsampling": "yes"}, "model.learn_upsampling"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        assemble_fcn(21, width_mult=W, **kwargs)
