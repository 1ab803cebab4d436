"""Initialisation from local weight files: torchvision `vgg16` / `resnet101` state dicts, and the
authors' Caffe models converted by `python -m deeplab.convert` (or a `.caffemodel`, converted on
the fly).

A torchvision load is a *plan*: (source key, target key, transform) triples. Every planned source
key must be in the file, every file key must be planned or known-unused (the ImageNet
classifier), and every transformed tensor must have the target's shape; otherwise one ValueError
lists all the problems. Nothing is copied unless the whole plan fits. A converted file's keys
are already ours: its backbone must fit whole; head layers are copied where their shapes fit.
Each format's input convention is in `conventions.py`.
"""

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from deeplab.models.heads import VGGBranch
from deeplab.models.resnet import ResNet
from deeplab.models.vgg import VGGFeatures
from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_tensors
from deeplab.weights.caffe.converter import convert
from deeplab.weights.conventions import PRETRAINED, PRETRAINED_FIX, is_converted, of_converted
from deeplab.weights.handed_config import check_finite, check_record

Transform = Callable[[Tensor], Tensor]
Plan = list[tuple[str, str, Transform]]
_same: Transform = lambda t: t

TV_FC_SPATIAL = 7  # torchvision's classifier.0 is fc6 as a 7x7 conv over pool5 (512 x 7 x 7)

log = logging.getLogger(__name__)


def read_weights(path: str | Path) -> dict:
    """A torchvision state dict or a converted Caffe file, loaded with `weights_only=True`.

    A `.caffemodel` is converted in memory (a few seconds for the released files).
    """
    path = Path(path).expanduser()
    if path.suffix == ".caffemodel" and path.is_file():
        return convert(path)
    state = read_tensors(path, PRETRAINED, PRETRAINED_FIX)
    if is_converted(state):
        check_record(state, f"{PRETRAINED} {path}")
        check_finite(state["state_dict"], f"{PRETRAINED} {path}")
        return state
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(
            f"{path} is neither a state dict of tensors (torchvision format) nor a file written "
            "by python -m deeplab.convert"
        )
    check_finite(state, f"{PRETRAINED} {path}")
    return state


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A torchvision-format state dict of tensors from `path`."""
    state = read_weights(path)
    if is_converted(state):
        raise UserError(
            f"{path} is a converted Caffe model; this network loads torchvision files only "
            "(deeplab.weights.networks.build_deeplab takes both)"
        )
    return state


def vgg16_features_plan(features: VGGFeatures, prefix: str) -> Plan:
    """torchvision `vgg16` / `vgg16_bn` `features.N.*` -> this network's convs (and BNs).

    Our stages hold the same layers in the same order as torchvision's flat `features`
    (conv, [bn,] relu, ..., pool), so a layer's torchvision index is its position in that order.
    """
    layers = [
        (f"stages.{stage_name}.{name}", module)
        for stage_name, stage in features.stages.items()
        for name, module in stage.named_children()
    ]
    plan: Plan = []
    for i, (name, module) in enumerate(layers):
        plan += [(f"features.{i}.{k}", f"{prefix}{name}.{k}", _same) for k in module.state_dict()]
    return plan


def _every(n_src: int, n_dst: int, what: str) -> slice:
    if n_src % n_dst:
        raise ValueError(f"{what}: {n_src} source filters do not subsample to {n_dst}")
    return slice(None, None, n_src // n_dst)


def fc_to_conv(weight: Tensor, out_ch: int, in_ch: int, kernel_size: int, spatial: int) -> Tensor:
    """A fully connected matrix (out, in * s * s) as an (out_ch, in_ch, k, k) conv kernel.

    Output (and for fc7, input) filters are subsampled by keeping every n-th one (4096 -> 1024:
    every 4th; the paper kept a subset of 1024). The s x s kernel is spatially subsampled to
    k x k at evenly spaced taps round(linspace(0, s - 1, k)) as DeepLab v1 did (7x7 -> 4x4: taps
    0, 2, 4, 6; -> 3x3: taps 0, 3, 6), which keeps the kernel's full spatial extent.
    """
    src_in = weight.shape[1] // (spatial * spatial)
    w = weight.reshape(weight.shape[0], src_in, spatial, spatial)
    w = w[_every(w.shape[0], out_ch, "output"), _every(src_in, in_ch, "input")]
    taps = torch.linspace(0, spatial - 1, kernel_size).round().long()
    return w[:, :, taps][:, :, :, taps]


def _subsample_bias(n_dst: int) -> Transform:
    return lambda t: t[_every(t.shape[0], n_dst, "bias")]


def vgg16_fc_plan(branch: VGGBranch, prefix: str, spatial: int = TV_FC_SPATIAL) -> Plan:
    """torchvision `classifier.0` / `classifier.3` -> a branch's fc6 / fc7 convolutions."""
    fc6, fc7 = branch.fc6, branch.fc7
    k = fc6.kernel_size[0]
    fc6_weight = lambda t: fc_to_conv(t, fc6.out_channels, fc6.in_channels, k, spatial)
    fc7_weight = lambda t: fc_to_conv(t, fc7.out_channels, fc7.in_channels, 1, 1)
    return [
        ("classifier.0.weight", f"{prefix}fc6.weight", fc6_weight),
        ("classifier.0.bias", f"{prefix}fc6.bias", _subsample_bias(fc6.out_channels)),
        ("classifier.3.weight", f"{prefix}fc7.weight", fc7_weight),
        ("classifier.3.bias", f"{prefix}fc7.bias", _subsample_bias(fc7.out_channels)),
    ]


def resnet_plan(resnet: ResNet, prefix: str) -> Plan:
    """torchvision ResNet keys map one to one (same module names)."""
    return [(k, prefix + k, _same) for k in resnet.state_dict()]


def apply_plan(
    model: nn.Module, state: dict[str, Tensor], plan: Plan, unused: tuple[str, ...], source: str
) -> None:
    """Checks the whole plan against `state` and `model`, then copies, or raises one ValueError.

    `unused`: key prefixes of the file that are deliberately dropped (ImageNet classifier).
    BatchNorm `num_batches_tracked` may be absent (older torchvision files lack it).
    """
    target = model.state_dict()
    planned = {src for src, _, _ in plan}
    missing = [s for s in planned if s not in state and not s.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in planned and not k.startswith(unused)]
    bad_shapes, loaded = [], {}
    for src, dst, fn in plan:
        if src not in state:
            continue
        try:
            value = fn(state[src])
        except (RuntimeError, ValueError, IndexError) as err:
            bad_shapes.append(f"{src} {tuple(state[src].shape)} -> {dst}: {err}")
            continue
        if value.shape != target[dst].shape:
            bad_shapes.append(
                f"{src} {tuple(state[src].shape)} -> {dst}: got {tuple(value.shape)}, "
                f"needs {tuple(target[dst].shape)}"
            )
        loaded[dst] = value
    problems = [
        f"{label} ({len(keys)}): {', '.join(sorted(keys))}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("wrong shapes", bad_shapes),
        )
        if keys
    ]
    if problems:
        raise UserError(
            f"cannot initialise from {source} (is it the right torchvision file, and "
            "model.width_mult=1.0?):\n  " + "\n  ".join(problems)
        )
    with torch.no_grad():
        for dst, value in loaded.items():
            target[dst].copy_(value)


def _branch_source(key: str, state: dict[str, Tensor]) -> str:
    """The file key for our `key`: the same, or branch 0's when the file has one head branch
    (LargeFOV / the VGG init's fc6-fc7 start every branch of a multi-branch head)."""
    if key in state or not key.startswith("head.branches."):
        return key
    _, _, _, rest = key.split(".", 3)
    single = not any(k.startswith("head.branches.1.") for k in state)
    return f"head.branches.0.{rest}" if single else key


def load_converted(model: nn.Module, converted: dict, source: str) -> None:
    """Initialises from a `deeplab.convert` file: the whole backbone, which must fit, and every
    head tensor whose shape fits (VGG fc6/fc7; a classifier of the same class count)."""
    state = {k.removeprefix("net."): v for k, v in converted["state_dict"].items()}
    target = model.state_dict()
    what = f"{source} ({converted['source']['recognised']})"
    backbone = [k for k in target if k.startswith("backbone.")]
    missing = [k for k in backbone if k not in state]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}"
        for k in backbone
        if k in state and state[k].shape != target[k].shape
    ]
    if missing or shapes:
        raise UserError(
            f"cannot initialise this backbone from {what}: "
            + "; ".join(
                f"{label} ({len(keys)}): {', '.join(keys[:4])}"
                for label, keys in (("missing", missing), ("wrong shapes", shapes))
                if keys
            )
            + f". Its network is built by: {' '.join(converted['overrides'])}"
        )
    stride = of_converted(converted).stride_in_1x1
    if isinstance(model.backbone, ResNet) and stride is not None:
        ours = model.backbone.layer2[0].conv1.stride == (2, 2)
        if ours != stride:
            raise UserError(
                f"{what} puts the ResNet stride on the first 1x1 conv: pass "
                "model.backbone.stride_in_1x1=true"
            )
    refitted = []
    with torch.no_grad():
        for key, value in target.items():
            src = _branch_source(key, state)
            if src in state and state[src].shape == value.shape:
                value.copy_(state[src])
            elif src in state:
                refitted.append(f"{key} {tuple(state[src].shape)} -> {tuple(value.shape)}")
    if refitted:  # fine-tuning to another class count (docs/own-data.md)
        log.warning(
            "%s: %d head tensors of another shape (another class count) are re-initialised, not "
            "loaded: %s",
            what,
            len(refitted),
            "; ".join(refitted[:4]),
        )


def load_pretrained(model: nn.Module, path: str | Path) -> None:
    """Initialises a DeepLab network's backbone (and VGG fc6/fc7) from a torchvision file, a
    converted Caffe file or a .caffemodel."""
    state = read_weights(path)
    if is_converted(state):
        load_converted(model, state, str(path))
        return
    backbone = model.backbone
    if isinstance(backbone, VGGFeatures):
        plan = vgg16_features_plan(backbone, "backbone.")
        for i, branch in enumerate(model.head.branches):
            plan += vgg16_fc_plan(branch, f"head.branches.{i}.")
        unused = ("classifier.6.",)
    else:
        plan, unused = resnet_plan(backbone, "backbone."), ("fc.",)
    apply_plan(model, state, plan, unused, str(path))
