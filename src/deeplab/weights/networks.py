"""The builders the model configs name (`_target_`): a network from deeplab.models, then the
weight files its config names loaded into it (`model.backbone.pretrained`, FCN's `init_from`).

The networks never read files; this is the one place where a model config meets a weight file.
"""

from pathlib import Path

from torch import nn

from deeplab import models
from deeplab.models.fcn import FCN
from deeplab.models.msc import MSC
from deeplab.runtime.errors import UserError
from deeplab.weights.checkpoint import network_state, read_checkpoint
from deeplab.weights.handed_config import check_finite
from deeplab.weights.pretrained import (
    apply_plan,
    load_pretrained,
    read_state_dict,
    resnet_plan,
    vgg16_fc_plan,
    vgg16_features_plan,
)


def _without_weights(backbone) -> tuple[str | None, dict]:
    """(the pretrained file or None, the backbone options the network is built from)."""
    options = dict(backbone)
    return options.pop("pretrained", None), options


def _inner(net: nn.Module) -> nn.Module:
    """The network inside an MSC wrapper (weights load into it, shared by every scale)."""
    return net.net if isinstance(net, MSC) else net


def build_deeplab(num_classes: int, backbone, **options) -> nn.Module:
    """`deeplab.models.assemble_deeplab`, its backbone (and VGG fc6/fc7) initialised from
    `backbone.pretrained`: a torchvision file, a converted Caffe file or a .caffemodel."""
    pretrained, backbone = _without_weights(backbone)
    net = models.assemble_deeplab(num_classes, backbone, **options)
    if pretrained is not None:
        load_pretrained(_inner(net), pretrained)
    return net


def build_fcn(num_classes: int, backbone, init_from: str | None = None, **options) -> nn.Module:
    """`deeplab.models.assemble_fcn`; `backbone.pretrained` (torchvision vgg16) fills the 13 convs
    and the full 7x7, 4096-wide fc6 and fc7; `init_from` then copies a previous stage's
    checkpoint (staged training 32s -> 16s -> 8s)."""
    pretrained, backbone = _without_weights(backbone)
    net = models.assemble_fcn(num_classes, backbone, **options)
    fcn = _inner(net)
    if pretrained is not None:
        plan = vgg16_features_plan(fcn.backbone, "backbone.") + vgg16_fc_plan(fcn.head, "head.")
        apply_plan(fcn, read_state_dict(pretrained), plan, ("classifier.6.",), str(pretrained))
    if init_from is not None:
        load_previous_stage(fcn, init_from)
    return net


def load_previous_stage(net: FCN, path: str | Path) -> None:
    """Staged training: copy an FCN-32s/16s checkpoint's layers into this stage by name.

    VGG-16, fc6, fc7 and score_fr must all be there; the skip layers this stage adds keep their
    zero / bilinear init (paper.md §9). The previous stage's final upsampler is dropped.
    """
    state = network_state(read_checkpoint(path, key="model.init_from"))
    check_finite(state, f"model.init_from={path}")
    own = net.state_dict()
    missing = [k for k in own if k.startswith(("backbone.", "head.")) and k not in state]
    unexpected = [k for k in state if k not in own and not k.startswith("upscore.")]
    shapes = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise UserError(
            f"model.init_from={path} is not an earlier stage of this FCN (same "
            f"model.width_mult and classes): missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shapes {shapes[:3]}"
        )
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def build_refinenet(num_classes: int, backbone, **options) -> nn.Module:
    """`deeplab.models.assemble_refinenet`, its ResNet initialised from `backbone.pretrained`
    (torchvision resnet101 file)."""
    pretrained, backbone = _without_weights(backbone)
    net = models.assemble_refinenet(num_classes, backbone, **options)
    if pretrained is not None:
        refinenet = _inner(net)
        plan = resnet_plan(refinenet.backbone, "backbone.")
        apply_plan(refinenet, read_state_dict(pretrained), plan, ("fc.",), str(pretrained))
    return net
