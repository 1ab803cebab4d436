"""Pretrained init from torchvision-format files, built here with torchvision's key names."""

import pytest
import torch

from deeplab.weights.networks import build_deeplab
from deeplab.weights.pretrained import apply_plan, resnet_plan, vgg16_fc_plan, vgg16_features_plan

W = 0.0625  # narrow: VGG stages 4..32 channels, fc 256, ResNet stem 4
VGG16_CONVS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)


def width(c: int, w: float) -> int:
    return max(1, round(c * w))


def tv_vgg16(w: float = W, device: str = "cpu", batch_norm: bool = False):
    """torchvision `vgg16()` (or `vgg16_bn()`) state-dict key names and shapes, widths times w.

    Their `features` is flat: conv, [bn,] relu per conv and a pool after each stage, so the
    indices are counted here the way torchvision's builder counts them, independently of ours.
    """
    state, in_ch, index = {}, 3, 0
    stage_ends = {1, 3, 6, 9, 12}  # the last conv of each of the five stages
    for n, c in enumerate(VGG16_CONVS):
        state[f"features.{index}.weight"] = torch.randn(width(c, w), in_ch, 3, 3, device=device)
        state[f"features.{index}.bias"] = torch.randn(width(c, w), device=device)
        if batch_norm:
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"features.{index + 1}.{name}"] = torch.rand(width(c, w), device=device)
            state[f"features.{index + 1}.num_batches_tracked"] = torch.tensor(7, device=device)
        index += 3 if batch_norm else 2
        index += n in stage_ends  # the pool
        in_ch = width(c, w)
    fc = width(4096, w)
    for i, (n_out, n_in) in zip((0, 3, 6), ((fc, in_ch * 49), (fc, fc), (1000, fc)), strict=True):
        state[f"classifier.{i}.weight"] = torch.randn(n_out, n_in, device=device)
        state[f"classifier.{i}.bias"] = torch.randn(n_out, device=device)
    return state


def tv_resnet101(w: float = W, device: str = "cpu", batches_tracked: bool = True):
    """torchvision `resnet101().state_dict()` key names and shapes, all widths times w."""
    state = {}

    def add(key: str, *shape: int) -> None:
        state[key] = torch.randn(*shape, device=device)

    def bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean"):
            add(f"{prefix}.{name}", n)
        state[f"{prefix}.running_var"] = torch.rand(n, device=device) + 0.5
        if batches_tracked:
            state[f"{prefix}.num_batches_tracked"] = torch.tensor(0, device=device)

    in_ch = width(64, w)
    add("conv1.weight", in_ch, 3, 7, 7)
    bn("bn1", in_ch)
    for i, n_blocks in enumerate((3, 4, 23, 3)):
        planes = width(64 * 2**i, w)
        for b in range(n_blocks):
            p = f"layer{i + 1}.{b}"
            add(f"{p}.conv1.weight", planes, in_ch, 1, 1)
            bn(f"{p}.bn1", planes)
            add(f"{p}.conv2.weight", planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            add(f"{p}.conv3.weight", planes * 4, planes, 1, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                add(f"{p}.downsample.0.weight", planes * 4, in_ch, 1, 1)
                bn(f"{p}.downsample.1", planes * 4)
            in_ch = planes * 4
    add("fc.weight", 1000, in_ch)
    add("fc.bias", 1000)
    return state


def vgg_model(path, **head):
    return build_deeplab(21, {"name": "vgg16", "pretrained": str(path)}, width_mult=W, **head)


def test_vgg16_largefov_maps_features_and_subsamples_fc6_fc7(tmp_path):
    state = tv_vgg16()
    torch.save(state, tmp_path / "vgg16.pth")
    net = vgg_model(tmp_path / "vgg16.pth", rates=(6, 12))  # 3x3 fc6, width 64 of 256
    assert torch.equal(net.backbone.stages.stage1.conv1_1.weight, state["features.0.weight"])
    assert torch.equal(net.backbone.stages.stage5.conv5_3.bias, state["features.28.bias"])
    fc6 = state["classifier.0.weight"].reshape(256, 32, 7, 7)
    for branch in net.head.branches:  # every branch starts from the same ImageNet fc6/fc7
        assert torch.equal(branch.fc6.weight, fc6[::4][:, :, [0, 3, 6]][:, :, :, [0, 3, 6]])
        assert torch.equal(branch.fc6.bias, state["classifier.0.bias"][::4])
        assert torch.equal(branch.fc7.weight[:, :, 0, 0], state["classifier.3.weight"][::4, ::4])
        assert abs(branch.fc8.weight.std().item() - 0.01) < 0.002  # fc8 is new


def test_vgg16_bn_maps_convs_and_batchnorms_by_torchvision_index(tmp_path):
    state = tv_vgg16(batch_norm=True)
    assert "features.40.weight" in state and "features.41.running_var" in state  # conv5_3, bn5_3
    torch.save(state, tmp_path / "vgg16_bn.pth")
    backbone = {"name": "vgg16_bn", "pretrained": str(tmp_path / "vgg16_bn.pth")}
    net = build_deeplab(21, backbone, width_mult=W)
    stages = net.backbone.stages
    assert torch.equal(stages.stage1.conv1_2.weight, state["features.3.weight"])
    assert torch.equal(stages.stage2.bn2_1.running_mean, state["features.8.running_mean"])
    assert torch.equal(stages.stage5.conv5_3.bias, state["features.40.bias"])
    assert torch.equal(stages.stage5.bn5_3.weight, state["features.41.weight"])
    assert torch.equal(net.head.branches[0].fc6.bias, state["classifier.0.bias"][::4])
    torch.save(tv_vgg16(), tmp_path / "plain.pth")  # a vgg16 file for a vgg16_bn network
    with pytest.raises(ValueError, match="missing keys"):
        build_deeplab(21, backbone | {"pretrained": str(tmp_path / "plain.pth")}, width_mult=W)


def test_vgg16_full_width_7x7_and_4x4_fc6(tmp_path):
    state = tv_vgg16()
    torch.save(state, tmp_path / "vgg16.pth")
    fc6 = state["classifier.0.weight"].reshape(256, 32, 7, 7)
    net = vgg_model(tmp_path / "vgg16.pth", kernel_size=7, rates=(4,), head_width=4096)
    assert torch.equal(net.head.branches[0].fc6.weight, fc6)
    net = vgg_model(tmp_path / "vgg16.pth", kernel_size=4, rates=(4,), head_width=4096)
    taps = [0, 2, 4, 6]
    assert torch.equal(net.head.branches[0].fc6.weight, fc6[:, :, taps][:, :, :, taps])


@pytest.mark.parametrize("batches_tracked", [True, False])
def test_resnet101_loads_key_for_key_and_stays_frozen(tmp_path, batches_tracked):
    state = tv_resnet101(batches_tracked=batches_tracked)
    torch.save(state, tmp_path / "resnet101.pth")
    backbone = {"name": "resnet101", "pretrained": str(tmp_path / "resnet101.pth")}
    net = build_deeplab(21, backbone, rates=(6, 12, 18, 24), width_mult=W).train()
    got = net.backbone.state_dict()
    assert torch.equal(got["layer3.22.conv2.weight"], state["layer3.22.conv2.weight"])
    assert torch.equal(
        got["layer4.0.downsample.1.running_var"], state["layer4.0.downsample.1.running_var"]
    )
    assert not net.backbone.bn1.training and not net.backbone.bn1.weight.requires_grad


def test_bad_file_gives_one_error_listing_every_problem(tmp_path):
    state = tv_vgg16()
    del state["features.10.weight"]
    state["features.99.weight"] = torch.zeros(1)
    state["features.2.bias"] = torch.zeros(5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as err:
        vgg_model(tmp_path / "bad.pth")
    text = str(err.value)
    assert "bad.pth" in text and "features.10.weight" in text and "features.99.weight" in text
    assert "features.2.bias (5,) -> backbone.stages.stage1.conv1_2.bias" in text


def test_missing_file_and_wrong_width_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.backbone.pretrained"):
        vgg_model(tmp_path / "absent.pth")
    torch.save(tv_vgg16(w=0.125), tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="wrong shapes"):
        vgg_model(tmp_path / "wide.pth")


def test_full_size_torchvision_keys_cover_every_layer_on_meta():
    """Full-size key coverage without memory: meta models, meta state dicts, shapes only."""
    with torch.device("meta"):
        vgg = build_deeplab(21, {"name": "vgg16"}, rates=(6, 12, 18, 24))
        resnet = build_deeplab(21, {"name": "resnet101"})
    plan = vgg16_features_plan(vgg.backbone, "backbone.")
    for i, branch in enumerate(vgg.head.branches):
        plan += vgg16_fc_plan(branch, f"head.branches.{i}.")
    apply_plan(vgg, tv_vgg16(1.0, "meta"), plan, ("classifier.6.",), "vgg16 (meta)")
    state = tv_resnet101(1.0, "meta")
    apply_plan(resnet, state, resnet_plan(resnet.backbone, "backbone."), ("fc.",), "meta")
    state["layer1.0.conv2.weight"] = torch.empty(64, 64, 1, 1, device="meta")
    with pytest.raises(ValueError, match="layer1.0.conv2.weight"):
        apply_plan(resnet, state, resnet_plan(resnet.backbone, "backbone."), ("fc.",), "meta")
