"""An independent float64 Caffe for the converter's tests: DeepLab's released nets as Caffe layer
lists, a forward pass written from the Caffe layers' definitions, and `.caffemodel` writers.

Nothing here imports the project's networks: the layer lists mirror the released prototxts
(VGG-16 ASPP-L and ResNet-101 MSC ASPP-L of DeepLab v2, DeepLab-LargeFOV of v1, paper.md §12), and
each layer is computed as Caffe defines it (`pooling_layer.cpp`, `interp_layer.cpp`,
`util/interp.cpp`, `batch_norm_layer.cpp`, `scale_layer.cpp`, `eltwise_layer.cpp`). Only the
multiply-adds are borrowed from torch (`F.conv2d` and tensor sums); every size, padding and
divisor rule is computed here. So a converted network that matches this reference on the same
weights computes what the released Caffe net computes.

`width` narrows every channel count (`max(1, round(c * width))`, as `model.width_mult` does) so
the full-depth nets run in the test suite's time budget.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# Caffe's input convention: BGR, minus this per-channel mean, no scaling (paper.md §12).
BGR_MEAN = (104.008, 116.669, 122.675)
NUM_CLASSES = 21
BN_EPS = 1e-5  # BatchNormParameter.eps default
ASPP_L_RATES = (6, 12, 18, 24)
# MSC branches of the ResNet nets: layer-name suffix, input Interp (zoom, shrink) from `data`,
# score Interp (zoom, shrink) back to the scale-1 score size.
MSC_BRANCHES = (("_res075", (3, 4), (4, 3)), ("_res05", (None, 2), (2, None)))


@dataclass(frozen=True)
class Layer:
    """One Caffe layer: what a prototxt `layer { }` says, with `param` its `*_param` fields.

    `share` names the layer whose weights this one reuses (Caffe's named `param { name: }`):
    the MSC copies `*_res075` / `*_res05` of every scale-1 layer.
    """

    name: str
    type: str
    bottom: tuple[str, ...]
    top: tuple[str, ...]
    param: dict = field(default_factory=dict)
    share: str | None = None


def channels(c: int, width: float) -> int:
    return max(1, round(c * width))


# ----------------------------------------------------------------------------- the nets


def _conv(
    name, bottom, num_output, kernel, pad=0, stride=1, dilation=1, bias=True, share=None, hole=False
):
    """`hole=True`: DeepLab v1's spelling of the dilation (`hole: 12`)."""
    param = dict(num_output=num_output, kernel_size=kernel, pad=pad, stride=stride)
    param.update({"hole" if hole else "dilation": dilation, "bias_term": bias})
    return Layer(name, "Convolution", (bottom,), (name,), param, share)


def _inplace(name, type_, blob, share=None, **param):
    return Layer(name, type_, (blob,), (blob,), param, share)


def _pool(name, bottom, pool, kernel, stride, pad):
    param = dict(pool=pool, kernel_size=kernel, stride=stride, pad=pad)
    return Layer(name, "Pooling", (bottom,), (name,), param)


def _interp(name, bottom, zoom=None, shrink=None):
    param = {k: v for k, v in (("zoom_factor", zoom), ("shrink_factor", shrink)) if v}
    return Layer(name, "Interp", (bottom,), (name,), param)


def _eltwise(name, bottoms, operation):
    return Layer(name, "Eltwise", tuple(bottoms), (name,), dict(operation=operation))


def vgg16_trunk(width: float, hole: bool = False) -> list[Layer]:
    """conv1_1 ... pool5 of DeepLab's VGG-16: 3x3 pools (strides 2, 2, 2, 1, 1, pad 1) and
    conv5 at dilation 2, pad 2. The v1 (V1-format) prototxt spells dilation `hole`."""
    layers, bottom = [], "data"
    for stage, (c, n) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)), start=1):
        rate = 2 if stage == 5 else 1
        for m in range(1, n + 1):
            name = f"conv{stage}_{m}"
            conv = _conv(name, bottom, channels(c, width), 3, rate, dilation=rate, hole=hole)
            layers += [conv, _inplace(f"relu{stage}_{m}", "ReLU", name)]
            bottom = name
        stride = 2 if stage <= 3 else 1
        layers.append(_pool(f"pool{stage}", bottom, "MAX", 3, stride, 1))
        bottom = f"pool{stage}"
    return layers


def _vgg_branch(bottom, suffix, rate, width, hole=False):
    """fc6 (3x3, rate) - relu - dropout - fc7 (1x1) - relu - dropout - fc8_voc12 (classes)."""
    fc6, fc7, fc8 = f"fc6{suffix}", f"fc7{suffix}", f"fc8_voc12{suffix}"
    return [
        _conv(fc6, bottom, channels(1024, width), 3, rate, dilation=rate, hole=hole),
        _inplace(f"relu6{suffix}", "ReLU", fc6),
        _inplace(f"drop6{suffix}", "Dropout", fc6, dropout_ratio=0.5),
        _conv(fc7, fc6, channels(1024, width), 1),
        _inplace(f"relu7{suffix}", "ReLU", fc7),
        _inplace(f"drop7{suffix}", "Dropout", fc7, dropout_ratio=0.5),
        _conv(fc8, fc7, NUM_CLASSES, 1),
    ]


def vgg16_aspp_l(width: float = 1.0) -> list[Layer]:
    """DeepLab v2 VGG-16 ASPP-L (test prototxt): four fc6_i/fc7_i/fc8_voc12_i branches on pool5
    at rates 6, 12, 18, 24, summed into `fc8_voc12`, then `fc8_interp` (zoom 8)."""
    layers = vgg16_trunk(width)
    for i, rate in enumerate(ASPP_L_RATES, start=1):
        layers += _vgg_branch("pool5", f"_{i}", rate, width)
    layers.append(_eltwise("fc8_voc12", [f"fc8_voc12_{i}" for i in range(1, 5)], "SUM"))
    return layers + [_interp("fc8_interp", "fc8_voc12", zoom=8)]


def largefov(width: float = 1.0) -> list[Layer]:
    """DeepLab-LargeFOV (v1 test prototxt, V1 format): pool5, then `pool5a` (AVE 3x3, stride 1,
    pad 1), fc6 (3x3, hole 12, pad 12, 1024 wide), fc7, fc8_voc12, `fc8_interp` (zoom 8)."""
    layers = vgg16_trunk(width, hole=True)
    layers.append(_pool("pool5a", "pool5", "AVE", 3, 1, 1))
    layers += _vgg_branch("pool5a", "", 12, width, hole=True)
    return layers + [_interp("fc8_interp", "fc8_voc12", zoom=8)]


def _resnet_block_names() -> list[tuple[str, int, int, int, bool]]:
    """(block name, planes, stride, dilation, first in stage) of ResNet-101's 33 blocks in MSRA's
    naming (res2a-c, res3a, res3b1-b3, res4a, res4b1-b22, res5a-c), DeepLab's strides/dilations."""
    blocks = []
    for stage, n, planes, stride, dilation in ((2, 3, 64, 1, 1), (3, 4, 128, 2, 1),
                                               (4, 23, 256, 1, 2), (5, 3, 512, 1, 4)):  # fmt: skip
        letters = ["a", "b", "c"] if n == 3 else ["a"] + [f"b{i}" for i in range(1, n)]
        for j, letter in enumerate(letters):
            blocks.append((f"{stage}{letter}", planes, stride if j == 0 else 1, dilation, j == 0))
    return blocks


def resnet101_trunk(width: float = 1.0, data: str = "data", s: str = "") -> list[Layer]:
    """conv1 ... res5c of DeepLab's ResNet-101 (output stride 8). Every layer and blob name ends
    in suffix `s`; a suffixed layer shares the weights of its scale-1 original (MSC)."""
    share = (lambda name: name) if s else (lambda name: None)
    layers = []

    def conv_bn(conv_name, bn_name, scale_name, bottom, c, kernel, pad=0, stride=1, dilation=1):
        top = conv_name + s
        layers.append(_conv(top, bottom, c, kernel, pad, stride, dilation, False, share(conv_name)))
        layers.append(
            _inplace(bn_name + s, "BatchNorm", top, share(bn_name), use_global_stats=True)
        )
        layers.append(_inplace(scale_name + s, "Scale", top, share(scale_name), bias_term=True))
        return top

    top = conv_bn("conv1", "bn_conv1", "scale_conv1", data, channels(64, width), 7, 3, 2)
    layers.append(_inplace("conv1_relu" + s, "ReLU", top))
    layers.append(_pool("pool1" + s, top, "MAX", 3, 2, 1))
    bottom = "pool1" + s
    for block, planes, stride, dilation, first in _resnet_block_names():
        inner, out = channels(planes, width), 4 * channels(planes, width)
        shortcut = bottom
        if first:
            shortcut = conv_bn(
                f"res{block}_branch1", f"bn{block}_branch1", f"scale{block}_branch1",
                bottom, out, 1, stride=stride,
            )  # fmt: skip
        x = bottom
        for part, (c, kernel, pad, st, dil) in {
            "2a": (inner, 1, 0, stride, 1),  # Caffe/MSRA: the stride sits on the first 1x1
            "2b": (inner, 3, dilation, 1, dilation),
            "2c": (out, 1, 0, 1, 1),
        }.items():
            x = conv_bn(
                f"res{block}_branch{part}", f"bn{block}_branch{part}",
                f"scale{block}_branch{part}", x, c, kernel, pad, st, dil,
            )  # fmt: skip
            if part != "2c":
                layers.append(_inplace(f"res{block}_branch{part}_relu" + s, "ReLU", x))
        layers.append(_eltwise(f"res{block}" + s, [shortcut, x], "SUM"))
        layers.append(_inplace(f"res{block}_relu" + s, "ReLU", f"res{block}" + s))
        bottom = f"res{block}" + s
    return layers


def _resnet_branch(data: str, s: str, width: float) -> list[Layer]:
    """One scale of the ResNet-101 ASPP-L net: the trunk, then fc1_voc12_c0..c3 summed."""
    layers = resnet101_trunk(width, data, s)
    # The released nets put the scale tag before the branch index here (`fc1_voc12_res05_c0`),
    # unlike the trunk's suffix (`conv1_res05`); each copy shares `fc1_voc12_c{i}`'s weights.
    branches = []
    for i, rate in enumerate(ASPP_L_RATES):
        name, share = f"fc1_voc12{s}_c{i}", (f"fc1_voc12_c{i}" if s else None)
        layers.append(_conv(name, "res5c" + s, NUM_CLASSES, 3, rate, 1, rate, True, share))
        branches.append(name)
    return layers + [_eltwise("fc1_voc12" + s, branches, "SUM")]


def msra_classifier() -> list[Layer]:
    """The ImageNet head of MSRA's `ResNet-101-model.caffemodel`, which DeepLab starts from:
    pool5 (AVE 7x7 on the 7x7 res5c of a 224 image) and fc1000 (InnerProduct to 1000 classes).
    The converter drops it. It only fits the undilated net, so it is written, never run."""
    return [
        _pool("pool5", "res5c", "AVE", 7, 1, 0),
        Layer("fc1000", "InnerProduct", ("pool5",), ("fc1000",), dict(num_output=1000)),
    ]


def resnet101_msc_aspp_l(width: float = 1.0) -> list[Layer]:
    """DeepLab v2 ResNet-101 MSC + ASPP-L (test prototxt): `data` and its Interp copies
    (0.75: zoom 3 shrink 4; 0.5: shrink 2) through three weight-sharing ResNets, each ending in
    fc1_voc12_c0..c3 summed; the 0.75 / 0.5 scores are resized to the scale-1 size (zoom 4
    shrink 3; zoom 2) and fused by Eltwise MAX into `fc1_voc12_fusion`, then zoom 8."""
    layers = [
        _interp(f"data{s[4:]}", "data", zoom, shrink) for s, (zoom, shrink), _ in MSC_BRANCHES
    ]
    layers += _resnet_branch("data", "", width)
    for s, _, _ in MSC_BRANCHES:
        layers += _resnet_branch(f"data{s[4:]}", s, width)
    for s, _, (zoom, shrink) in MSC_BRANCHES:
        layers.append(_interp(f"fc1_voc12{s}_interp", f"fc1_voc12{s}", zoom, shrink))
    scores = ["fc1_voc12"] + [f"fc1_voc12{s}_interp" for s, _, _ in MSC_BRANCHES]
    layers.append(_eltwise("fc1_voc12_fusion", scores, "MAX"))
    return layers + [_interp("fc1_voc12_interp", "fc1_voc12_fusion", zoom=8)]


# ----------------------------------------------------------------------------- weights


def blob_shapes(net: list[Layer]) -> dict[str, list[tuple[int, ...]]]:
    """Each weighted layer's Caffe blob shapes, with input channels traced from `data` (3)."""
    chans, shapes = {"data": 3}, {}
    for layer in net:
        c = chans[layer.bottom[0]]
        p = layer.param
        if layer.type == "Convolution":
            k = p["kernel_size"]
            shapes[layer.name] = [(p["num_output"], c, k, k)]
            if p["bias_term"]:
                shapes[layer.name].append((p["num_output"],))
            c = p["num_output"]
        elif layer.type == "InnerProduct":  # on a 1 x 1 map (after a global pool)
            shapes[layer.name] = [(p["num_output"], c), (p["num_output"],)]
            c = p["num_output"]
        elif layer.type == "BatchNorm":
            shapes[layer.name] = [(c,), (c,), (1,)]
        elif layer.type == "Scale":
            shapes[layer.name] = [(c,), (c,)]
        chans[layer.top[0]] = c
    return shapes


def random_weights(net: list[Layer], seed: int) -> dict[str, list[np.ndarray]]:
    """Known random weights, float32-representable (a caffemodel stores float32) in float64.

    Convolutions are He-initialised so activations neither die nor explode over 101 layers.
    BatchNorm stores (mean * f, variance * f, f) with a scale factor f in 0.5..2, so a
    converter that forgets to divide by f is caught; Scale's gamma is small on each residual
    branch's last layer (as trained ResNets have it) to keep the depth stable.
    """
    rng = np.random.default_rng(seed)
    all_shapes, weights = blob_shapes(net), {}
    for layer in net:
        if layer.share is not None:
            weights[layer.name] = weights[layer.share]
            continue
        shapes = all_shapes.get(layer.name)
        if shapes is None:
            continue
        if layer.type in ("Convolution", "InnerProduct"):
            fan_in = int(np.prod(shapes[0][1:]))
            blobs = [rng.normal(0, (2 / fan_in) ** 0.5, shapes[0])]
            blobs += [rng.normal(0, 1, s) for s in shapes[1:]]
        elif layer.type == "BatchNorm":
            c = shapes[0][0]
            f = rng.uniform(0.5, 2.0)
            mean, var = rng.normal(0, 0.5, c), rng.uniform(0.5, 2.0, c)
            blobs = [mean * f, var * f, np.array([f])]
        else:  # Scale
            c = shapes[0][0]
            gamma = (
                rng.uniform(0.1, 0.3, c) if "branch2c" in layer.name else rng.uniform(0.5, 1.5, c)
            )
            blobs = [gamma, rng.normal(0, 0.2, c)]
        weights[layer.name] = [b.astype(np.float32).astype(np.float64) for b in blobs]
    return weights


# ----------------------------------------------------------------------------- the layers


def conv_output_size(n: int, kernel: int, pad: int, stride: int, dilation: int) -> int:
    """`conv_layer.cpp`: (n + 2 pad - (dilation (kernel - 1) + 1)) / stride + 1, rounded down."""
    return (n + 2 * pad - (dilation * (kernel - 1) + 1)) // stride + 1


def pooled_size(n: int, kernel: int, stride: int, pad: int) -> int:
    """`pooling_layer.cpp`: ceil((n + 2 pad - kernel) / stride) + 1, one less when padding is
    used and the last window would start in the bottom/right padding."""
    out = -(-(n + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= n + pad:
        out -= 1
    return out


def interp_size(n: int, zoom: int | None = None, shrink: int | None = None) -> int:
    """`interp_layer.cpp`: shrink first ((n - 1) / s + 1, integer division), then zoom
    (n + (n - 1)(z - 1))."""
    if shrink:
        n = (n - 1) // shrink + 1
    if zoom:
        n = n + (n - 1) * (zoom - 1)
    return n


def interp_matrix(n_in: int, n_out: int) -> Tensor:
    """Rows: output samples; columns: weights on the input samples. Corner-aligned bilinear
    (`util/interp.cpp`): output i reads source position i (n_in - 1) / (n_out - 1), from its
    floor and the next sample (none past the last) with weights 1 - frac and frac.

    Caffe computes that position in float32 whatever the blob type; here it is exact. The
    difference (about 1e-7 of a sample) is far below the tests' 1e-6 relative tolerance.
    """
    a = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
        i0 = int(src)
        frac = src - i0
        a[i, i0] += 1 - frac
        a[i, min(i0 + 1, n_in - 1)] += frac
    return a


def _run_convolution(x: Tensor, p: dict, blobs: list) -> Tensor:
    dilation = p.get("dilation", p.get("hole", 1))
    weight = torch.from_numpy(blobs[0])
    bias = torch.from_numpy(blobs[1]) if p["bias_term"] else None
    y = F.conv2d(x, weight, bias, p["stride"], p["pad"], dilation)
    k = p["kernel_size"]
    expected = [conv_output_size(n, k, p["pad"], p["stride"], dilation) for n in x.shape[-2:]]
    assert list(y.shape[-2:]) == expected
    return y


def _run_batch_norm(x: Tensor, p: dict, blobs: list) -> Tensor:
    # use_global_stats: normalise by the stored statistics, each divided by the scale factor.
    assert p["use_global_stats"]
    f = blobs[2][0]
    factor = 0.0 if f == 0 else 1.0 / f
    mean = torch.from_numpy(blobs[0] * factor)[:, None, None]
    var = torch.from_numpy(blobs[1] * factor)[:, None, None]
    return (x - mean) / torch.sqrt(var + BN_EPS)


def _run_scale(x: Tensor, p: dict, blobs: list) -> Tensor:
    y = x * torch.from_numpy(blobs[0])[:, None, None]
    return y + torch.from_numpy(blobs[1])[:, None, None] if p["bias_term"] else y


def _run_pooling(x: Tensor, p: dict, blobs: list) -> Tensor:
    """MAX takes the window clipped to the image; AVE sums the window clipped to the image
    and divides by its size clipped to the padded image (zero padding counts)."""
    k, s, pad = p["kernel_size"], p["stride"], p["pad"]
    h, w = x.shape[-2:]
    out_h, out_w = pooled_size(h, k, s, pad), pooled_size(w, k, s, pad)
    # Pad so that every window [i s - pad, i s - pad + k) is inside; MAX pads with -inf and
    # AVE with 0, which leave the clipped max / sum unchanged.
    extra_h, extra_w = (out_h - 1) * s - pad + k - h, (out_w - 1) * s - pad + k - w
    fill = float("-inf") if p["pool"] == "MAX" else 0.0
    xp = F.pad(x, (pad, max(extra_w, 0), pad, max(extra_h, 0)), value=fill)
    windows = torch.stack(
        [
            xp[..., dy : dy + (out_h - 1) * s + 1 : s, dx : dx + (out_w - 1) * s + 1 : s]
            for dy in range(k)
            for dx in range(k)
        ]
    )
    if p["pool"] == "MAX":
        return windows.amax(0)

    def sizes(n_out, n):
        return torch.tensor(
            [min(i * s - pad + k, n + pad) - (i * s - pad) for i in range(n_out)],
            dtype=torch.float64,
        )

    return windows.sum(0) / (sizes(out_h, h)[:, None] * sizes(out_w, w)[None, :])


def _run_interp(x: Tensor, p: dict, blobs: list) -> Tensor:
    zoom, shrink = p.get("zoom_factor"), p.get("shrink_factor")
    h, w = x.shape[-2:]
    a_h = interp_matrix(h, interp_size(h, zoom, shrink))
    a_w = interp_matrix(w, interp_size(w, zoom, shrink))
    return torch.einsum("ih,nchw,jw->ncij", a_h, x, a_w)


def _run_eltwise(xs: list[Tensor], p: dict) -> Tensor:
    assert all(x.shape == xs[0].shape for x in xs), [x.shape for x in xs]
    if p["operation"] == "SUM":
        return sum(xs[1:], xs[0])
    return torch.stack(xs).amax(0)


_LAYERS = {
    "Convolution": _run_convolution,
    "BatchNorm": _run_batch_norm,
    "Scale": _run_scale,
    "ReLU": lambda x, p, blobs: x.clamp_min(0),
    "Dropout": lambda x, p, blobs: x,  # test phase: identity
    "Pooling": _run_pooling,
    "Interp": _run_interp,
}


def forward(net: list[Layer], weights: dict, data: Tensor) -> dict[str, Tensor]:
    """Runs the net (test phase) on `data` (N, 3, H, W), Caffe's input (BGR minus `BGR_MEAN`);
    returns every blob by name (an in-place layer's top holds its last value)."""
    blobs = {"data": data.double()}
    for layer in net:
        xs = [blobs[b] for b in layer.bottom]
        if layer.type == "Eltwise":
            y = _run_eltwise(xs, layer.param)
        else:
            y = _LAYERS[layer.type](xs[0], layer.param, weights.get(layer.name, []))
        blobs[layer.top[0]] = y
    return blobs


def caffe_input(rgb: Tensor) -> Tensor:
    """Caffe's input for an RGB image in 0..255: channels reversed to BGR, minus the mean."""
    return rgb.flip(1) - torch.tensor(BGR_MEAN, dtype=rgb.dtype)[:, None, None]


# ----------------------------------------------------------------------------- caffemodels


def write_caffemodel(path: Path, net: list[Layer], weights: dict, v1: bool = False) -> Path:
    """Writes `net` with `weights` as Caffe's `Net::ToProto` would: one entry per layer in
    order, each with its blobs (the MSC copies store their own copy of the shared weights).

    New format: `layer` (field 100) with string types and `shape`d blobs. `v1=True`: the old
    `layers` (field 2) with enum types and blobs in num/channels/height/width, a vector as
    1 x 1 x 1 x n, as DeepLab v1's caffemodels are. Layer types without a V1 enum (DeepLab's
    Interp) are left out of a V1 file; they hold no weights.
    """
    from deeplab.weights.caffe import caffe_pb

    proto = caffe_pb.NetParameter(name="deeplab")
    for layer in net:
        if v1:
            v1_type = layer.type.upper()  # CONVOLUTION, RELU, POOLING, DROPOUT, ...
            if v1_type not in caffe_pb.V1_TYPES:
                assert layer.name not in weights, layer.name
                continue
            entry = proto.layers.add(name=layer.name, type=caffe_pb.V1_TYPES[v1_type])
        else:
            entry = proto.layer.add(name=layer.name, type=layer.type)
        entry.bottom.extend(layer.bottom)
        entry.top.extend(layer.top)
        for array in weights.get(layer.name, []):
            blob = entry.blobs.add()
            if v1:
                dims = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.astype(np.float32).ravel().tolist())
    path.write_bytes(proto.SerializeToString())
    return path
