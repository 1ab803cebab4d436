"""Which released DeepLab network a caffemodel is, from its layer names and blob shapes.

Each Caffe layer that holds weights is either placed (it becomes keys of our state dict), dropped
on purpose (an ImageNet classifier, the MSC scale copies, a classifier the user drops) or unplaced;
an unplaced layer makes the layout unknown and the conversion stops.
"""

import re
from dataclasses import dataclass, field

import numpy as np

from deeplab.models.width import scale_width
from deeplab.weights.caffe.caffemodel import Layer
from deeplab.weights.conventions import CAFFE

# The input every Caffe DeepLab network reads (paper.md §7, §12), as overrides.
CAFFE_NORMALIZATION = CAFFE.override_list()
# The released test nets pad each image to 513 x 513 (tta.pad_to, docs/caffe.md "Released models").
CAFFE_TEST_PROTOCOL = ["tta.pad_to=513"]
ASPP_L_RATES = [6, 12, 18, 24]
IMAGENET_CLASSES = 1000
# The released MSC nets name each scale copy by a tag `_res075` / `_res05`: as a suffix in the
# backbone (`conv1_res05`, `res2a_branch1_res075`), before the branch index in the classifier
# (`fc1_voc12_res05_c0`), and the tag may sit anywhere between two name parts. The scale-1 layer's
# name is the copy's name without its tag.
_MSC_TAG = re.compile(r"_res0\d+(?=_|$)")

_RESNET = re.compile(r"^(res|bn|scale)([2-5])([a-z])(\d*)_branch(1|2a|2b|2c)$")
_RESNET_STEM = {"conv1": "conv1", "bn_conv1": "bn1", "scale_conv1": "bn1"}
_RESNET_BRANCH = {"1": ("downsample.0", "downsample.1"), "2a": ("conv1", "bn1")}
_RESNET_BRANCH |= {"2b": ("conv2", "bn2"), "2c": ("conv3", "bn3")}
_VGG_CONV = re.compile(r"^conv([1-5])_([1-3])$")
# fc6 / fc6_1..4, fc8_voc12 / fc8_voc12_1..4 (the middle part, a data set name, starts a letter
# and may hold underscores: fc8_person_part_1, fc1_person_part_c0).
_VGG_FC = re.compile(r"^(fc[678])(?:_[a-z][a-z0-9_]*?)?(?:_([1-4]))?$")
# (`fc1_c0`: branch 0 of an unnamed data set, not a data set called "c0")
_RESNET_CLASSIFIER = re.compile(r"^fc1(?:_(?!c[0-3]$)[a-z][a-z0-9_]*?)?(?:_c([0-3]))?$")


@dataclass
class Recognised:
    """What the file is, and where each of its layers goes."""

    description: str
    overrides: list[str]
    complete: bool  # the state dict is a whole network (False: a backbone initialisation)
    prefix: str  # "net." for an MSC-wrapped network
    places: dict[str, str] = field(default_factory=dict)  # Caffe layer -> our module path
    dropped: dict[str, str] = field(default_factory=dict)  # Caffe layer -> why


def outputs(layer: Layer) -> int:
    """Output channels of a conv or fully connected layer (legacy FC blobs are 1 x 1 x out x in)."""
    weight = layer.blobs[0]
    if layer.type == "InnerProduct" or weight.ndim != 4:
        return weight.reshape(-1, weight.shape[-1]).shape[0]
    return weight.shape[0]


def _width_mult(channels: int, full: int) -> float:
    """The model.width_mult that gives `channels` where the full network has `full`."""
    mult = channels / full
    if scale_width(full, mult) != channels:
        raise ValueError(f"{channels} channels is not a width multiple of {full}")
    return mult


def _width_override(mult: float) -> list[str]:
    return [] if mult == 1.0 else [f"model.width_mult={mult:g}"]


def _resnet_place(name: str) -> str | None:
    if name in _RESNET_STEM:
        return _RESNET_STEM[name]
    match = _RESNET.match(name)
    if not match:
        return None
    kind, stage, letter, number, branch = match.groups()
    block = int(number) if number else ord(letter) - ord("a")
    conv, bn = _RESNET_BRANCH[branch]
    return f"layer{int(stage) - 1}.{block}.{conv if kind == 'res' else bn}"


def msc_original(name: str) -> str | None:
    """The scale-1 layer an MSC copy shares its weights with, None for a scale-1 layer."""
    match = _MSC_TAG.search(name)
    return None if match is None else name[: match.start()] + name[match.end() :]


def _split_msc(layers: list[Layer]) -> tuple[list[Layer], dict[str, str]]:
    """The scale-1 layers, and the MSC copies (checked equal to their scale-1 layer) dropped."""
    by_name = {lay.name: lay for lay in layers}
    kept, dropped = [], {}
    for lay in layers:
        original = msc_original(lay.name)
        if original is None:
            kept.append(lay)
            continue
        base = by_name.get(original)
        if base is None:
            kept.append(lay)  # no scale-1 layer: left unplaced
            continue
        same = len(base.blobs) == len(lay.blobs) and all(
            a.shape == b.shape and np.array_equal(a, b)
            for a, b in zip(base.blobs, lay.blobs, strict=True)
        )
        if not same:
            raise ValueError(
                f"MSC copy {lay.name} differs from {base.name}: the released MSC nets share "
                "weights across scales, so this file was edited or is corrupt"
            )
        dropped[lay.name] = f"MSC copy of {base.name} (checked equal)"
    return kept, dropped


def _recognise_resnet(layers, drop_classifier: bool, msc: bool) -> Recognised:
    by_name = {lay.name: lay for lay in layers}
    mult = _width_mult(by_name["conv1"].blobs[0].shape[0], 64)
    rec = Recognised("", [], True, "net." if msc else "")
    classifiers = {}
    for lay in layers:
        place = _resnet_place(lay.name)
        if place is not None:
            rec.places[lay.name] = f"backbone.{place}"
        elif lay.name == "fc1000" or outputs(lay) == IMAGENET_CLASSES:
            rec.dropped[lay.name] = "ImageNet classifier"
        elif match := _RESNET_CLASSIFIER.match(lay.name):
            classifiers[int(match.group(1) or 0)] = lay
    base = ["backbone=resnet101", "model.backbone.stride_in_1x1=true"] + _width_override(mult)
    if not classifiers or drop_classifier:
        rec.dropped |= {lay.name: "classifier (--drop-classifier)" for lay in classifiers.values()}
        rec.complete, rec.prefix = False, ""
        what = "MSRA ImageNet" if "fc1000" in rec.dropped else "DeepLab"
        rec.description = f"{what} ResNet-101 backbone (initialisation; classifier dropped)"
        rec.overrides = base + CAFFE_NORMALIZATION
        return rec
    weights = [classifiers[i].blobs[0] for i in sorted(classifiers)]
    num_classes, kernel = weights[0].shape[0], weights[0].shape[-1]
    for i, lay in enumerate(classifiers[j] for j in sorted(classifiers)):
        rec.places[lay.name] = f"head.branches.{i}.conv"
    if len(classifiers) == 4:
        head, rates = "ASPP-L", ASPP_L_RATES
    else:
        head, rates = ("LargeFOV", [12]) if kernel == 3 else (f"{kernel}x{kernel}", [1])
    model = [f"model.kernel_size={kernel}", f"model.rates={rates}".replace(" ", "")]
    scales = "MSC " if msc else ""
    rec.description = f"DeepLab v2 ResNet-101 {scales}+ {head}, {num_classes} classes"
    if num_classes == 91 or "coco" in next(iter(classifiers.values())).name:
        rec.description += " (COCO-trained init.caffemodel)"
    rec.overrides = (
        ["model=aspp_l", *base, *model, f"model.msc={str(msc).lower()}"]
        + [f"data.num_classes={num_classes}"]
        + CAFFE_NORMALIZATION
        + CAFFE_TEST_PROTOCOL
    )
    return rec


def _recognise_vgg(layers, drop_classifier: bool) -> Recognised:
    by_name = {lay.name: lay for lay in layers}
    mult = _width_mult(by_name["conv1_1"].blobs[0].shape[0], 64)
    rec = Recognised("", [], True, "")
    fcs: dict[tuple[str, int], Layer] = {}
    for lay in layers:
        if match := _VGG_CONV.match(lay.name):
            s, m = match.groups()
            rec.places[lay.name] = f"backbone.stages.stage{s}.conv{s}_{m}"
        elif match := _VGG_FC.match(lay.name):
            fcs[(match.group(1), int(match.group(2) or 1))] = lay
    branches = sorted({i for _, i in fcs})
    fc6 = fcs.get(("fc6", 1))
    if fc6 is None or fc6.blobs[0].ndim != 4 or fc6.blobs[0].shape[-1] != 3:
        return rec  # fc6 is not DeepLab's 3x3 conv: left unplaced
    width = fc6.blobs[0].shape[0]
    head_width = round(width / mult)
    classes = {outputs(lay) for (kind, _), lay in fcs.items() if kind == "fc8"}
    imagenet = classes == {IMAGENET_CLASSES}
    for (kind, i), lay in fcs.items():
        if kind == "fc8" and (imagenet or drop_classifier):
            rec.dropped[lay.name] = "ImageNet classifier" if imagenet else "classifier"
        else:
            rec.places[lay.name] = f"head.branches.{branches.index(i)}.{kind}"
    base = ["backbone=vgg16", *_width_override(mult)]
    if head_width != 1024:
        base.append(f"model.head_width={head_width}")
    aspp = len(branches) == 4
    model = "model=aspp_l" if aspp else "model=largefov"
    if imagenet or not classes or drop_classifier:
        rec.complete = False
        name = "DeepLab VGG-16" if not imagenet else "VGG-16 ImageNet init (vgg16_20M)"
        rec.description = f"{name} initialisation, {width}-wide fc6 3x3; classifier dropped"
        rec.overrides = [model, *base] + CAFFE_NORMALIZATION
        return rec
    (num_classes,) = classes
    if aspp:
        rec.description = f"DeepLab v2 VGG-16 ASPP-L, {num_classes} classes"
        extra = ["model.pool5a=false"]
    else:
        rec.description = (
            f"DeepLab v1 LargeFOV (VGG-16, fc6 3x3 rate 12, pool5a), {num_classes} classes"
        )
        extra = ["model.pool5a=true"]
    rec.overrides = (
        [model, *base, *extra, f"data.num_classes={num_classes}"]
        + CAFFE_NORMALIZATION
        + CAFFE_TEST_PROTOCOL
    )
    return rec


def recognise(layers: list[Layer], drop_classifier: bool = False) -> tuple[Recognised, list]:
    """(what the file is, the layers that could not be placed)."""
    # An MSC net has scale copies of its layers, whether or not the file repeats their weights.
    msc = any(msc_original(lay.name) is not None for lay in layers)
    kept, msc_dropped = _split_msc([lay for lay in layers if lay.blobs])
    names = {lay.name for lay in kept}
    if {"conv1", "res5c_branch2c"} <= names:
        rec = _recognise_resnet(kept, drop_classifier, msc)
    elif {"conv1_1", "conv5_3"} <= names:
        rec = _recognise_vgg(kept, drop_classifier)
    else:
        rec = Recognised("no DeepLab network (neither ResNet-101 nor VGG-16 names)", [], False, "")
    rec.dropped |= msc_dropped
    unplaced = [lay for lay in kept if lay.name not in rec.places and lay.name not in rec.dropped]
    return rec, unplaced
