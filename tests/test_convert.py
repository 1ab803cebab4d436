"""python -m deeplab.convert: caffemodels written here (new and V1 formats) convert into networks
that load strictly; Caffe's conventions (BatchNorm scale factor, Scale, BGR) are applied; bad
files get one clear error and no output file."""

import re

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from deeplab.convert import main
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError
from deeplab.weights.caffe.converter import convert
from deeplab.weights.caffe.recognise import msc_original
from deeplab.weights.caffe.released_layouts import (
    CaffeLayer,
    resnet101_layers,
    vgg16_layers,
    write_caffemodel,
)

W = 0.0625  # narrow networks: the layout is the released one, the widths 1/16


def build(overrides: list[str]):
    """The network the converter's overrides compose (train config), as train.py builds it."""
    known = compose("train")
    usable = [o for o in overrides if not o.startswith("tta.") or "tta" in known]
    return instantiate(compose("train", usable).model)


def by_name(layers):
    return {lay.name: lay for lay in layers}


def test_resnet101_msc_aspp_loads_strictly_with_caffe_conventions(tmp_path):
    layers = resnet101_layers(W, num_classes=21)
    out = convert(write_caffemodel(tmp_path / "train_iter_20000.caffemodel", layers))
    assert out["complete"] and "ResNet-101 MSC + ASPP-L, 21 classes" in out["source"]["recognised"]
    assert {"model=aspp_l", "model.msc=true", "model.backbone.stride_in_1x1=true"} <= set(
        out["overrides"]
    )
    assert "data.mean=[122.675,116.669,104.008]" in out["overrides"]
    net = build(out["overrides"])
    net.load_state_dict(out["state_dict"], strict=True)
    caffe = by_name(layers)
    # BGR -> RGB on the first conv only
    torch.testing.assert_close(
        net.net.backbone.conv1.weight, torch.tensor(caffe["conv1"].blobs[0][:, ::-1].copy()).float()
    )
    # BatchNorm: (mean * f, var * f, f) -> mean, var; Scale -> weight, bias
    bn = net.net.backbone.layer3[2].bn2  # res4b2_branch2b: MSRA's b<n> numbering
    mean_f, var_f, f = caffe["bn4b2_branch2b"].blobs
    torch.testing.assert_close(bn.running_mean, torch.tensor(mean_f / f[0]).float())
    torch.testing.assert_close(bn.running_var, torch.tensor(var_f / f[0]).float())
    gamma, beta = caffe["scale4b2_branch2b"].blobs
    torch.testing.assert_close(bn.weight.data, torch.tensor(gamma).float())
    torch.testing.assert_close(bn.bias.data, torch.tensor(beta).float())
    assert net.net.backbone.layer2[0].conv1.stride == (2, 2)  # stride on the 1x1 (Caffe)
    head = net.net.head.branches[3].conv
    torch.testing.assert_close(
        head.weight.data, torch.tensor(caffe["fc1_voc12_c3"].blobs[0]).float()
    )
    assert head.dilation == (24, 24)


def test_msc_is_recognised_when_the_scale_copies_hold_no_weights(tmp_path):
    layers = [
        CaffeLayer(lay.name, lay.type, [] if "_res0" in lay.name else lay.blobs)
        for lay in resnet101_layers(W)
    ]
    out = convert(write_caffemodel(tmp_path / "msc.caffemodel", layers))
    assert "model.msc=true" in out["overrides"]
    build(out["overrides"]).load_state_dict(out["state_dict"], strict=True)


@pytest.mark.parametrize(
    ("name", "original"),
    [
        ("conv1_res05", "conv1"),  # the trunk: tag as a suffix (released test/train prototxt)
        ("res2a_branch1_res075", "res2a_branch1"),
        ("bn4b22_branch2c_res05", "bn4b22_branch2c"),
        ("fc1_voc12_res05_c0", "fc1_voc12_c0"),  # the classifier: tag before the branch index
        ("fc1_voc12_res075_c3", "fc1_voc12_c3"),
        ("fc1_voc12_c2_res075", "fc1_voc12_c2"),  # a suffix on the classifier is read too
        ("fc1_voc12_c0", None),
        ("res5c_branch2c", None),
        ("fc8_voc12_4", None),
    ],
)
def test_msc_copies_are_named_as_the_released_nets_name_them(name, original):
    assert msc_original(name) == original


def test_msc_classifier_copies_with_the_scale_tag_as_suffix_also_convert(tmp_path):
    """Files written with the tag after the branch index (other exports) place the same way."""
    layers = [
        CaffeLayer(
            re.sub(r"^(fc1_voc12)(_res0\d+)(_c\d)$", r"\1\3\2", lay.name), lay.type, lay.blobs
        )
        for lay in resnet101_layers(W)
    ]
    assert "fc1_voc12_c0_res05" in by_name(layers)
    out = convert(write_caffemodel(tmp_path / "suffix.caffemodel", layers))
    assert "fc1_voc12_c0_res05" in out["dropped"]
    build(out["overrides"]).load_state_dict(out["state_dict"], strict=True)


def test_largefov_v1_format_with_legacy_blob_shapes(tmp_path):
    layers = vgg16_layers(W, num_classes=21, head="largefov")
    out = convert(write_caffemodel(tmp_path / "largefov.caffemodel", layers, v1=True))
    assert "LargeFOV" in out["source"]["recognised"] and "model.pool5a=true" in out["overrides"]
    net = build(out["overrides"])
    net.load_state_dict(out["state_dict"], strict=True)
    assert isinstance(net.pool5a, torch.nn.AvgPool2d)
    caffe = by_name(layers)
    torch.testing.assert_close(
        net.backbone.stages.stage1.conv1_1.weight,
        torch.tensor(caffe["conv1_1"].blobs[0][:, ::-1].copy()).float(),
    )
    torch.testing.assert_close(
        net.head.branches[0].fc8.bias.data, torch.tensor(caffe["fc8_voc12"].blobs[1]).float()
    )


def test_vgg16_aspp_l_has_four_branches_and_no_pool5a(tmp_path):
    layers = vgg16_layers(W, num_classes=5, head="aspp")
    out = convert(write_caffemodel(tmp_path / "vgg.caffemodel", layers))
    assert {"model=aspp_l", "model.pool5a=false", "data.num_classes=5"} <= set(out["overrides"])
    net = build(out["overrides"])
    net.load_state_dict(out["state_dict"], strict=True)
    fc7 = by_name(layers)["fc7_3"].blobs[0]
    torch.testing.assert_close(net.head.branches[2].fc7.weight.data, torch.tensor(fc7).float())


@pytest.mark.parametrize(
    ("layers", "drop", "dropped"),
    [
        (resnet101_layers(W, imagenet_fc=True, msc=False), False, "fc1000"),  # MSRA ImageNet
        (resnet101_layers(W, num_classes=91, aspp=False, msc=False), True, "fc1_coco"),  # COCO
        (vgg16_layers(W, head="init"), False, "fc8"),  # vgg16_20M
    ],
)
def test_initialisations_hold_everything_but_the_classifier(tmp_path, layers, drop, dropped):
    out = convert(write_caffemodel(tmp_path / "init.caffemodel", layers), drop_classifier=drop)
    assert not out["complete"] and dropped in out["dropped"]
    net = build(out["overrides"] + ["model=aspp_l"] * ("model=largefov" not in out["overrides"]))
    missing, unexpected = net.load_state_dict(out["state_dict"], strict=False)
    classifier = {
        n for n, p in net.named_parameters() if any(p is q for q in net.classifier_parameters())
    }
    assert set(missing) == classifier and not unexpected


def test_coco_init_keeps_its_classifier_unless_dropped(tmp_path):
    path = write_caffemodel(tmp_path / "init.caffemodel", resnet101_layers(W, 91, aspp=False))
    out = convert(path)
    assert out["complete"] and "COCO" in out["source"]["recognised"]
    assert {"data.num_classes=91", "model.kernel_size=1", "model.rates=[1]"} <= set(
        out["overrides"]
    )
    build(out["overrides"]).load_state_dict(out["state_dict"], strict=True)


def test_batchnorm_scale_factor_zero_gives_zero_statistics_as_caffe(tmp_path):
    layers = resnet101_layers(W, msc=False)
    bn = by_name(layers)["bn_conv1"]
    bn.blobs[2] = np.zeros(1)
    state = convert(write_caffemodel(tmp_path / "m.caffemodel", layers))["state_dict"]
    assert (
        not state["backbone.bn1.running_mean"].any() and not state["backbone.bn1.running_var"].any()
    )


def test_pool5a_averages_over_the_padded_3x3_window_as_caffe():
    net = build(["model=largefov", "model.width_mult=0.0625"])
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y = net.pool5a(x)
    # Caffe AVE pooling divides by the window clipped to the padded input: 9 at every position
    assert y[0, 0, 0, 0] == (0 + 1 + 4 + 5) / 9 and y[0, 0, 1, 1] == x[0, 0, :3, :3].sum() / 9


def test_cli_prints_recognised_network_and_overrides(tmp_path, capsys):
    src = write_caffemodel(tmp_path / "vgg.caffemodel", vgg16_layers(W))
    main([str(src), str(tmp_path / "out" / "vgg.pth")])
    printed = capsys.readouterr().out
    assert "recognised: DeepLab v2 VGG-16 ASPP-L, 21 classes" in printed
    assert "overrides: model=aspp_l backbone=vgg16" in printed
    saved = torch.load(tmp_path / "out" / "vgg.pth", weights_only=True)
    assert saved["overrides"] == convert(src)["overrides"] and saved["complete"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["vgg.pth"]  # no temp file left


def _msc_disagreeing():
    layers = resnet101_layers(W)
    copy = by_name(layers)["res3a_branch2a_res05"]
    copy.blobs = [copy.blobs[0] + 1e-3]
    return layers


def _unknown_layer():
    return vgg16_layers(W) + [CaffeLayer("extra_conv", "Convolution", [np.ones((4, 4, 1, 1))])]


def _wrong_shape():
    layers = resnet101_layers(W, msc=False)
    lay = by_name(layers)["res4b5_branch2b"]
    lay.blobs = [lay.blobs[0][:, :-1]]
    return layers


def _no_weights():
    return [CaffeLayer("relu", "ReLU", [])]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a caffemodel at all \xff\xfe", "not a readable .caffemodel"),
        (b'name: "DeepLab"\nlayer {\n  name: "data"\n}\n', "text network definition"),
        ("truncated", "truncated"),
        (_no_weights, "holds no layer with weights"),
        (_unknown_layer, "could not place 1 layer(s): extra_conv (4, 4, 1, 1)"),
        (_msc_disagreeing, "MSC copy res3a_branch2a_res05 differs from res3a_branch2a"),
        (
            _wrong_shape,
            "shape mismatch: backbone.layer3.5.conv2.weight (16, 15, 3, 3) (needs (16, 16, 3, 3))",
        ),
    ],
)
def test_bad_caffemodels_get_one_clear_error_and_no_output(tmp_path, capsys, content, message):
    src = tmp_path / "bad.caffemodel"
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content == "truncated":
        whole = write_caffemodel(src, vgg16_layers(W)).read_bytes()
        src.write_bytes(whole[: len(whole) // 2])
    else:
        write_caffemodel(src, content())
    with pytest.raises(UserError, match=str(src)) as err:
        convert(src)
    assert message in str(err.value)
    with pytest.raises(SystemExit) as refused:
        main([str(src), str(tmp_path / "out.pth")])
    assert refused.value.code == 2  # the message alone (deeplab.runtime.cli), no traceback
    assert "Error:" in capsys.readouterr().err and not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("prefix", ["fc1_c", "fc1_person_part_c"])
def test_aspp_classifiers_of_other_data_set_names_are_placed(tmp_path, prefix):
    """The released nets name the classifier after their data set (`fc1_voc12_c0`); other
    trainings use `fc1_c0` or names with underscores: each is still the ASPP branch it says."""
    layers = resnet101_layers(W, 7, msc=False)
    for lay in layers:
        lay.name = lay.name.replace("fc1_voc12_c", prefix)
    converted = convert(write_caffemodel(tmp_path / "net.caffemodel", layers))
    assert converted["complete"] and "data.num_classes=7" in converted["overrides"]
    assert "model.rates=[6,12,18,24]" in converted["overrides"]
