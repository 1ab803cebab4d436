"""Converted Caffe models compute what the released Caffe nets compute (issue 13, "Done when").

Each released net (ResNet-101 MSC + ASPP-L and VGG-16 ASPP-L of DeepLab v2 in the new format,
DeepLab-LargeFOV of v1 in the V1 format) is written here as a .caffemodel with known random
weights by the protobuf library, converted by `deeplab.convert`, built from the train config
composed with the converter's overrides, and run in float64 on an RGB image. Its score map
(after the branch sum and MSC fusion, before the final zoom-8 Interp) must equal, within 1e-6
relative, the independent Caffe computation of `caffe_reference` fed Caffe's own input (BGR
minus the mean). Narrow widths keep the full 101-layer depth cheap.
"""

from pathlib import Path

import caffe_reference as ref  # tests/caffe_reference.py; pytest puts tests/ on sys.path
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from deeplab.runtime.config import compose

RTOL = 1e-6
# name: (layer list builder, width, V1 format, score blob)
NETS = {
    "resnet101_msc_aspp_l": (ref.resnet101_msc_aspp_l, 1 / 32, False, "fc1_voc12_fusion"),
    "vgg16_aspp_l": (ref.vgg16_aspp_l, 1 / 16, False, "fc8_voc12"),
    "largefov": (ref.largefov, 1 / 16, True, "fc8_voc12"),
}


# These nets are narrow: thousands of small ops, where a second thread only adds
# synchronisation (measured: 3.6x the CPU time of one thread for the ResNet at 513).
pytestmark = pytest.mark.usefixtures("one_thread")


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------- the reference
# The reference is checked against hand computations first: the equivalence tests below are only
# as good as its Caffe rules.


@pytest.mark.parametrize(
    ("n", "zoom", "shrink", "expected"),
    [(321, None, 2, 161), (321, 3, 4, 241), (41, 8, None, 321), (65, 8, None, 513),
     (513, 3, 4, 385), (31, 4, 3, 41), (21, 2, None, 41), (49, 4, 3, 65), (321, None, 8, 41),
     (300, 3, 4, 223)],
)  # fmt: skip
def test_interp_sizes_are_caffes_integer_arithmetic(n, zoom, shrink, expected):
    assert ref.interp_size(n, zoom, shrink) == expected


def test_interp_is_corner_aligned_bilinear():
    x = torch.tensor([[[[0.0, 10.0, 20.0]]]], dtype=torch.float64)
    y = ref._run_interp(x.transpose(-1, -2), {"zoom_factor": 2}, []).transpose(-1, -2)
    assert y.flatten().tolist() == [0.0, 5.0, 10.0, 15.0, 20.0]
    # Shrink 3 then zoom 4 on 31 samples: 41 samples at source positions 0, 0.75, 1.5, ...
    a = ref.interp_matrix(31, ref.interp_size(31, 4, 3))
    assert a.shape == (41, 31)
    assert a[1, 0] == 0.25 and a[1, 1] == 0.75 and a[-1, -1] == 1.0
    z = torch.rand(1, 2, 31, 17, dtype=torch.float64)
    got = ref._run_interp(z, {"zoom_factor": 4, "shrink_factor": 3}, [])
    torch.testing.assert_close(got, F.interpolate(z, (41, 21), mode="bilinear", align_corners=True))


@pytest.mark.parametrize(
    ("n", "kernel", "stride", "pad", "expected"),
    [(161, 3, 2, 1, 81), (321, 3, 2, 1, 161), (4, 3, 2, 1, 3), (6, 3, 2, 0, 3),
     (5, 2, 2, 1, 3),  # ceil gives 4, but window 4 would start in the padding
     (65, 3, 1, 1, 65), (112, 3, 2, 0, 56)],
)  # fmt: skip
def test_pooled_sizes_round_up_as_caffe(n, kernel, stride, pad, expected):
    assert ref.pooled_size(n, kernel, stride, pad) == expected


def test_ave_pooling_divides_by_the_window_clipped_to_the_padded_input():
    ones = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    y = ref._run_pooling(ones, {"pool": "AVE", "kernel_size": 3, "stride": 2, "pad": 1}, [])
    # Windows start at -1, 1, 3 and end (clipped to 4 + pad) at 2, 4, 5: sizes 3, 3, 2.
    assert y.shape == (1, 1, 3, 3)
    assert y[0, 0, 0, 0] == 4 / 9 and y[0, 0, 1, 1] == 1.0 and y[0, 0, 2, 2] == 1 / 4
    assert y[0, 0, 0, 2] == 2 / 6
    y5a = ref._run_pooling(ones, {"pool": "AVE", "kernel_size": 3, "stride": 1, "pad": 1}, [])
    assert y5a[0, 0, 0, 0] == 4 / 9 and y5a[0, 0, 0, 1] == 6 / 9  # pool5a: always / 9


def test_max_pooling_ignores_padding_even_for_negative_inputs():
    x = -torch.arange(1.0, 17.0, dtype=torch.float64).reshape(1, 1, 4, 4)
    y = ref._run_pooling(x, {"pool": "MAX", "kernel_size": 3, "stride": 2, "pad": 1}, [])
    assert y[0, 0].tolist() == [[-1.0, -2.0, -4.0], [-5.0, -6.0, -8.0], [-13.0, -14.0, -16.0]]


def test_batchnorm_divides_the_stored_statistics_by_the_scale_factor():
    x = torch.tensor([5.0, 1.0], dtype=torch.float64)[None, :, None, None]
    blobs = [np.array([6.0, -2.0]), np.array([8.0, 0.5]), np.array([2.0])]  # mean, var times 2
    y = ref._run_batch_norm(x, {"use_global_stats": True}, blobs)
    expected = [(5 - 3) / (4 + ref.BN_EPS) ** 0.5, (1 + 1) / (0.25 + ref.BN_EPS) ** 0.5]
    torch.testing.assert_close(y.flatten(), torch.tensor(expected, dtype=torch.float64))


def test_reference_nets_have_the_released_layout():
    resnet = ref.resnet101_msc_aspp_l(1 / 32)
    convs = [layer for layer in resnet if layer.type == "Convolution" and not layer.share]
    # 101 layers: conv1, 33 blocks x 3 convs, the classifier (four parallel fc1_voc12_c*), plus
    # the four projection shortcuts (branch1).
    assert len(convs) == 1 + 33 * 3 + 4 + 4
    names = {layer.name for layer in convs}
    assert names >= {"res3b3_branch2c", "res4b22_branch2b", "res5c_branch2c", "fc1_voc12_c3"}
    copies = [layer for layer in resnet if layer.share]
    assert len(copies) == 2 * (3 * 104 + 4)  # each conv + BatchNorm + Scale, and fc1, twice
    assert {layer.name for layer in ref.largefov(1)} >= {"pool5a", "fc6", "fc8_voc12"}
    assert "pool5a" not in {layer.name for layer in ref.vgg16_aspp_l(1)}


# ----------------------------------------------------------------------------- caffemodels


@pytest.mark.parametrize("v1", [False, True])
def test_caffemodel_writer_uses_the_requested_layer_format(tmp_path, v1):
    from deeplab.weights.caffe import caffe_pb

    net = ref.largefov(1 / 32)
    weights = ref.random_weights(net, seed=0)
    path = ref.write_caffemodel(tmp_path / "m.caffemodel", net, weights, v1=v1)
    proto = caffe_pb.NetParameter.FromString(path.read_bytes())
    entries = proto.layers if v1 else proto.layer
    assert len(proto.layer if v1 else proto.layers) == 0
    fc6 = next(e for e in entries if e.name == "fc6")
    weight, bias = fc6.blobs
    if v1:
        assert fc6.type == caffe_pb.V1_TYPES["CONVOLUTION"]
        assert (weight.num, weight.channels, weight.height, weight.width) == (32, 16, 3, 3)
        assert (bias.num, bias.channels, bias.height, bias.width) == (1, 1, 1, 32)
    else:
        assert fc6.type == "Convolution" and list(weight.shape.dim) == [32, 16, 3, 3]
    np.testing.assert_array_equal(np.asarray(weight.data).reshape(32, 16, 3, 3), weights["fc6"][0])


# ----------------------------------------------------------------------------- equivalence


def _convert(src: Path, dst: Path) -> dict:
    """`python -m deeplab.convert SRC DST`, in-process; returns the saved file."""
    from deeplab.convert import main

    main([str(src), str(dst)])
    return torch.load(dst, weights_only=True)


def _compose(overrides: list[str]):
    """The train config composed with the converter's overrides, all of them (`tta.pad_to`
    included): they must compose for train.py as for evaluate.py and predict.py."""
    return compose("train", overrides)


@pytest.fixture(scope="module", params=list(NETS))
def converted(request, tmp_path_factory):
    """(net name, reference layers, weights, converted model in float64 eval, its config)."""
    build, width, v1, _ = NETS[request.param]
    net = build(width)
    weights = ref.random_weights(net, seed=13)
    tmp = tmp_path_factory.mktemp(request.param)
    src = ref.write_caffemodel(tmp / f"{request.param}.caffemodel", net, weights, v1=v1)
    saved = _convert(src, tmp / f"{request.param}.pth")
    cfg = _compose(list(saved["overrides"]))
    model = instantiate(cfg.model)
    model.load_state_dict(saved["state_dict"], strict=True)
    return request.param, net, weights, model.double().eval(), cfg


@pytest.mark.parametrize(
    ("height", "width"), [(321, 321), (513, 513), (300, 400)], ids=["321", "513", "300x400"]
)
def test_converted_net_matches_the_caffe_layers(converted, height, width):
    """321 (the training crop) and 513 (the test nets' padded size) are the released sizes. At
    300 x 400 the pools' rounding up matters (pool1: 151 x 201, not 150 x 200)."""
    name, net, weights, model, cfg = converted
    if name.startswith("resnet") and (height - 1) % 8:
        pytest.skip("Caffe's MSC net cannot run here: its scales' score maps differ in size")
    torch.manual_seed(height)
    rgb = torch.rand(1, 3, height, width, dtype=torch.float64) * 255
    blobs = ref.forward(net, weights, ref.caffe_input(rgb))
    expected = blobs[NETS[name][3]]
    mean = torch.tensor(list(cfg.data.mean), dtype=torch.float64)[:, None, None]
    std = torch.tensor(list(cfg.data.std), dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        got = model((rgb - mean) / std)
    # pool1-3 round up: 300 -> 151 -> 76 -> 39, 400 -> 201 -> 101 -> 51.
    side = {321: (41, 41), 513: (65, 65), 300: (39, 51)}[height]
    assert got.shape == expected.shape == (1, ref.NUM_CLASSES, *side)
    assert rel_error(got, expected) <= RTOL
    if name.startswith("resnet"):
        # Every scale wins the MSC max somewhere, so the fusion is really compared.
        for branch in ("fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05_interp"):
            assert (blobs[branch] == expected).any(), branch


@pytest.mark.parametrize("converted", ["resnet101_msc_aspp_l"], indirect=True)
def test_converted_msc_scales_match_the_caffe_branches(converted):
    """In training the MSC net returns the scores each of Caffe's four losses reads: at 321 the
    fused map, fc1_voc12 (41 x 41), the 0.75 branch after its zoom 4 / shrink 3 Interp
    (fc1_voc12_res075_interp, 31 -> 41) and fc1_voc12_res05 (21 x 21)."""
    _, net, weights, model, cfg = converted
    torch.manual_seed(0)
    rgb = torch.rand(1, 3, 321, 321, dtype=torch.float64) * 255
    blobs = ref.forward(net, weights, ref.caffe_input(rgb))
    mean = torch.tensor(list(cfg.data.mean), dtype=torch.float64)[:, None, None]
    std = torch.tensor(list(cfg.data.std), dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        fused, *scales = model.train()((rgb - mean) / std)
    model.eval()
    assert rel_error(fused, blobs["fc1_voc12_fusion"]) <= RTOL
    for got, blob in zip(
        scales, ["fc1_voc12", "fc1_voc12_res075_interp", "fc1_voc12_res05"], strict=True
    ):
        assert got.shape == blobs[blob].shape
        assert rel_error(got, blobs[blob]) <= RTOL, blob


@pytest.mark.parametrize("given", ["converted", "caffemodel"])
def test_msra_resnet101_initialises_deeplabs_backbone(tmp_path, given):
    """MSRA's ImageNet ResNet-101 file, converted (or the .caffemodel itself) and given as
    model.backbone.pretrained, makes the backbone compute Caffe's res5c in DeepLab's layout."""
    trunk = ref.resnet101_trunk(1 / 32)
    layers = trunk + ref.msra_classifier()
    weights = ref.random_weights(layers, seed=101)
    src = ref.write_caffemodel(tmp_path / "ResNet-101-model.caffemodel", layers, weights)
    saved = _convert(src, tmp_path / "msra.pth")
    assert not saved["complete"] and "fc1000" in saved["dropped"]
    path = tmp_path / "msra.pth" if given == "converted" else src
    cfg = _compose([*saved["overrides"], f"model.backbone.pretrained={path}"])
    model = instantiate(cfg.model).double().eval()
    torch.manual_seed(1)
    rgb = torch.rand(1, 3, 321, 321, dtype=torch.float64) * 255
    expected = ref.forward(trunk, weights, ref.caffe_input(rgb))["res5c"]
    mean = torch.tensor(list(cfg.data.mean), dtype=torch.float64)[:, None, None]
    std = torch.tensor(list(cfg.data.std), dtype=torch.float64)[:, None, None]
    with torch.no_grad():
        got = model.backbone((rgb - mean) / std)["res5"]
    assert got.shape == expected.shape == (1, 64, 41, 41)
    assert rel_error(got, expected) <= RTOL
