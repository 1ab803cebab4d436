"""The input convention each weight file was trained with, and the check that a run matches it.

A network trained on one normalization scores garbage (or trains badly) on another, silently:
torchvision's ImageNet weights expect RGB with the ImageNet mean and std on the 0-255 scale; the
Caffe files expect the 0-255 image minus DeepLab's mean, unscaled (58x larger inputs), and put a
ResNet block's stride on the first 1x1 conv. `check_run` compares the weights a training run
starts from with its `data.mean` / `data.std` and stride placement before anything is built.
"""

import ast
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_tensors

# The Caffe models' BGR mean (104.008, 116.669, 122.675) in RGB order; no std scaling
# (paper.md §12). The data sets default to it.
CAFFE_MEAN_RGB = (122.675, 116.669, 104.008)
UNIT_STD = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Convention:
    name: str
    init: str  # the `init=` option that sets it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    stride_in_1x1: bool | None = None  # ResNet only; None: not a ResNet file, or not recorded

    def fits(self, mean, std) -> bool:
        return bool(np.allclose(self.mean, mean) and np.allclose(self.std, std))

    def override_list(self) -> list[str]:
        """["data.mean=[...]", "data.std=[...]"]: the Hydra overrides that set this convention."""
        return [
            f"data.{k}=[{','.join(str(float(v)) for v in getattr(self, k))}]"
            for k in ("mean", "std")
        ]

    def overrides(self) -> str:
        return " ".join(f'"{o}"' for o in self.override_list())


TORCHVISION = Convention(
    "torchvision (RGB, ImageNet mean and std on the 0-255 scale)",
    "torchvision_vgg16 / torchvision_vgg16_bn / torchvision_resnet101",
    (123.675, 116.28, 103.53),
    (58.395, 57.12, 57.375),
    stride_in_1x1=False,
)
CAFFE = Convention(
    "Caffe (DeepLab's BGR mean in RGB order, std 1; first conv flipped to RGB)",
    "caffe / msra_resnet101 / coco_resnet101",
    CAFFE_MEAN_RGB,
    UNIT_STD,
    stride_in_1x1=True,
)


def _override(overrides: list[str], key: str) -> str | None:
    values = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key]
    return values[-1] if values else None


def of_converted(converted: dict) -> Convention:
    """A `python -m deeplab.convert` file's convention, from the overrides it records."""
    overrides = converted["overrides"]
    mean = ast.literal_eval(_override(overrides, "data.mean"))
    std = ast.literal_eval(_override(overrides, "data.std"))
    stride = _override(overrides, "model.backbone.stride_in_1x1")
    return Convention(
        f"the Caffe conversion of {converted['source']['file']}",
        "caffe",
        tuple(mean),
        tuple(std),
        None if stride is None else stride == "true",
    )


PRETRAINED = "model.backbone.pretrained weights file"
PRETRAINED_FIX = (
    "download the weights (docs/models.md 'ImageNet weights', docs/caffe.md 'Released models') "
    "or set model.backbone.pretrained=null"
)


def is_converted(obj) -> bool:
    return isinstance(obj, dict) and "overrides" in obj and "state_dict" in obj


def of_file(path: str | Path) -> Convention:
    """The convention of a weight file: a .caffemodel, a converted file or a torchvision file."""
    path = Path(path).expanduser()
    if path.suffix == ".caffemodel":
        return CAFFE
    if not path.is_file():
        return TORCHVISION  # the loader names the missing file
    obj = read_tensors(path, PRETRAINED, PRETRAINED_FIX, mmap=True)
    return of_converted(obj) if is_converted(obj) else TORCHVISION


def check_run(cfg) -> None:
    """Refuse to train from weights whose input convention this run's config contradicts."""
    model = cfg.get("model") or {}
    backbone = model.get("backbone") or {}
    path = backbone.get("pretrained")
    if path is None:
        return
    conv = of_file(path)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    problems = []
    if not conv.fits(mean, std):
        problems.append(
            f"these weights expect inputs normalized as {conv.name}, mean {list(conv.mean)} std "
            f"{list(conv.std)}, but this run normalizes with data.mean={mean} data.std={std}: "
            f"use init={conv.init.split(' / ')[0]} (it sets both) without data.mean / data.std "
            f"overrides, or pass {conv.overrides()}"
        )
    stride = backbone.get("stride_in_1x1")
    if stride is not None and conv.stride_in_1x1 is not None and stride != conv.stride_in_1x1:
        where = "first 1x1 conv (Caffe)" if conv.stride_in_1x1 else "3x3 conv (torchvision)"
        problems.append(
            f"these weights put a ResNet block's stride on the {where}: pass "
            f"model.backbone.stride_in_1x1={str(conv.stride_in_1x1).lower()}"
        )
    if problems:
        raise UserError(f"model.backbone.pretrained={path}: " + "; ".join(problems))


def converted_checkpoint(converted: dict, source) -> tuple[dict, dict]:
    """(state dict, `checkpoint_record`-style record) of a converted file used as ckpt_path,
    so that evaluate/predict check it as they check our own checkpoints."""
    overrides = converted["overrides"]
    if not converted["complete"]:
        raise UserError(
            f"ckpt_path={source} holds a backbone initialisation without a classifier "
            f"({converted['source']['recognised']}): train from it with init=caffe "
            f"init.path={source}, or convert a trained network"
        )
    conv = of_converted(converted)
    meta = {
        "network": f"{converted['source']['recognised']}; pass: {' '.join(overrides)}",
        "num_classes": int(_override(overrides, "data.num_classes")),
        "normalization": {"mean": list(conv.mean), "std": list(conv.std)},
    }
    if "model" in converted:  # files converted before it was recorded lack it
        meta["model"] = converted["model"]
    return converted["state_dict"], meta
