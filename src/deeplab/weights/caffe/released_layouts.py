"""Caffemodels with the released DeepLab layer layouts and random weights (tests, benchmark).

The layer names, blob shapes and order follow the released files (paper.md §12); the weights are
random. `write_caffemodel` writes either layer format: the new `layer` (field 100) with `shape`
blobs, or the V1 `layers` (field 2) with enum types and legacy num/channels/height/width blobs.
"""

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplab.models.resnet import RESNET101_BLOCKS
from deeplab.models.vgg import VGG16_STAGES
from deeplab.models.width import scale_width
from deeplab.weights.caffe.caffe_pb import V1_TYPES, NetParameter

_V1 = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT"}


@dataclass
class CaffeLayer:
    name: str
    type: str  # new-format type string
    blobs: list[np.ndarray]


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    return bytes(out + bytes([n]))


def _packed_floats(array: np.ndarray) -> bytes:
    """BlobProto `data` (field 5, packed float32) as wire bytes: a float list per value would
    take minutes and gigabytes for a full-size network."""
    raw = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return bytes([5 << 3 | 2]) + _varint(len(raw)) + raw


def write_caffemodel(path: str | Path, layers: list[CaffeLayer], v1: bool = False) -> Path:
    """Serialise `layers` as a NetParameter; `v1`: the old format DeepLab v1 was released in."""
    net = NetParameter(name="deeplab")
    for layer in layers:
        if v1:
            entry = net.layers.add(name=layer.name, type=V1_TYPES[_V1[layer.type]])
        else:
            entry = net.layer.add(name=layer.name, type=layer.type)
        for array in layer.blobs:
            blob = entry.blobs.add()
            if v1:  # legacy 4-D shape, leading dims padded with 1
                num, channels, height, width = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = num, channels, height, width
            else:
                blob.shape.dim.extend(array.shape)
            blob.MergeFromString(_packed_floats(array))
    path = Path(path)
    path.write_bytes(net.SerializeToString())
    return path


def _conv(rng, name: str, out_ch: int, in_ch: int, k: int, bias: bool) -> CaffeLayer:
    fan_in = in_ch * k * k
    blobs = [rng.normal(0, (2 / fan_in) ** 0.5, (out_ch, in_ch, k, k))]
    if bias:
        blobs.append(rng.normal(0, 0.1, out_ch))
    return CaffeLayer(name, "Convolution", blobs)


def _bn_scale(rng, suffix: str, channels: int) -> list[CaffeLayer]:
    factor = rng.uniform(0.5, 2.0)  # Caffe's moving-average scale factor
    mean, var = rng.normal(0, 0.5, channels), rng.uniform(0.5, 2.0, channels)
    gamma, beta = rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.2, channels)
    return [
        CaffeLayer(f"bn{suffix}", "BatchNorm", [mean * factor, var * factor, np.array([factor])]),
        CaffeLayer(f"scale{suffix}", "Scale", [gamma, beta]),
    ]


def _block_names(stage: int, blocks: int) -> list[str]:
    """MSRA's names: res2a, res2b, res2c; res3a, res3b1..b3; res4a, res4b1..b22; res5a..c."""
    if blocks <= 3:
        return [f"{stage}{'abc'[b]}" for b in range(blocks)]
    return [f"{stage}a"] + [f"{stage}b{b}" for b in range(1, blocks)]


def resnet101_layers(
    width_mult: float = 1.0,
    num_classes: int | None = 21,
    aspp: bool = True,
    msc: bool = True,
    imagenet_fc: bool = False,
    seed: int = 0,
) -> list[CaffeLayer]:
    """DeepLab v2 ResNet-101 (`fc1_voc12_c0..3`, MSC copies named as `msc_copy_name`), MSRA's
    ImageNet model (`imagenet_fc`: `fc1000`, no DeepLab classifier), or a single 1x1 `fc1_coco`
    classifier (`aspp=False`)."""
    rng = np.random.default_rng(seed)
    stem = scale_width(64, width_mult)
    layers = [_conv(rng, "conv1", stem, 3, 7, False), *_bn_scale(rng, "_conv1", stem)]
    in_ch = stem
    for i, n in enumerate(RESNET101_BLOCKS):
        planes = scale_width(64 * 2**i, width_mult)
        for b, block in enumerate(_block_names(i + 2, n)):
            if b == 0:
                layers.append(_conv(rng, f"res{block}_branch1", planes * 4, in_ch, 1, False))
                layers += _bn_scale(rng, f"{block}_branch1", planes * 4)
            for branch, (out_ch, inp, k) in zip(
                ("2a", "2b", "2c"),
                ((planes, in_ch, 1), (planes, planes, 3), (planes * 4, planes, 1)),
                strict=True,
            ):
                layers.append(_conv(rng, f"res{block}_branch{branch}", out_ch, inp, k, False))
                layers += _bn_scale(rng, f"{block}_branch{branch}", out_ch)
            in_ch = planes * 4
    if imagenet_fc:
        w = rng.normal(0, 0.01, (1000, in_ch))
        layers.append(CaffeLayer("fc1000", "InnerProduct", [w, rng.normal(0, 0.01, 1000)]))
    elif num_classes is not None and aspp:
        layers += [_conv(rng, f"fc1_voc12_c{i}", num_classes, in_ch, 3, True) for i in range(4)]
    elif num_classes is not None:
        layers.append(_conv(rng, "fc1_coco", num_classes, in_ch, 1, True))
    if msc:  # DeepLab v2's train/test nets hold a copy of every layer per extra scale
        layers += [
            CaffeLayer(msc_copy_name(lay.name, tag), lay.type, lay.blobs)
            for tag in ("_res075", "_res05")
            for lay in layers
        ]
    return layers


def msc_copy_name(name: str, tag: str) -> str:
    """The released name of a layer's MSC copy: the scale tag before the classifier's branch
    index (`fc1_voc12_res05_c0`), a suffix everywhere else (`res2a_branch1_res05`)."""
    match = re.fullmatch(r"(fc1.*)(_c\d+)", name)
    return f"{match[1]}{tag}{match[2]}" if match else f"{name}{tag}"


def vgg16_layers(
    width_mult: float = 1.0,
    num_classes: int = 21,
    head: str = "aspp",
    seed: int = 0,
) -> list[CaffeLayer]:
    """VGG-16 DeepLab: `head="aspp"` (v2 ASPP-L, fc6_1..4 / fc7_1..4 / fc8_voc12_1..4),
    `"largefov"` (v1, fc6 / fc7 / fc8_voc12) or `"init"` (the VGG-16 init DeepLab trained from:
    fc6 3x3 and fc7 as 1024-wide convolutions, fc8 the 1000 ImageNet classes)."""
    rng = np.random.default_rng(seed)
    layers, in_ch = [], 3
    for s, (channels, n_convs) in enumerate(VGG16_STAGES, start=1):
        out_ch = scale_width(channels, width_mult)
        for m in range(1, n_convs + 1):
            layers.append(_conv(rng, f"conv{s}_{m}", out_ch, in_ch, 3, True))
            in_ch = out_ch
    width = scale_width(1024, width_mult)
    suffixes = ["_1", "_2", "_3", "_4"] if head == "aspp" else [""]
    fc8 = "fc8" if head == "init" else "fc8_voc12"
    classes = 1000 if head == "init" else num_classes
    for sfx in suffixes:
        layers += [
            _conv(rng, f"fc6{sfx}", width, in_ch, 3, True),
            _conv(rng, f"fc7{sfx}", width, width, 1, True),
            _conv(rng, f"{fc8}{sfx}", classes, width, 1, True),
        ]
    return layers
