"""DeepLab v2 = backbone (VGG-16 or ResNet-101 at output stride 8) + summed atrous branches."""

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from deeplab.models.fixed_backbone import refuse_weight_files
from deeplab.models.heads import DeepLabHead, ResNetBranch, VGGBranch
from deeplab.models.msc import MSC
from deeplab.models.resnet import resnet101
from deeplab.models.vgg import VGGFeatures
from deeplab.models.width import scale_width
from deeplab.runtime.config_checks import invalid_value, numbers, positive_int
from deeplab.runtime.errors import UserError

BACKBONES = ("vgg16", "vgg16_bn", "resnet101")


class DeepLab(nn.Module):
    """Image (B, 3, H, W) -> logits (B, C, h, w) at output stride 8 (321 -> 41)."""

    def __init__(
        self,
        backbone: nn.Module,
        feature: str,
        head: DeepLabHead,
        kernel_size: int,
        rates: Sequence[int],
        pool5a: bool = False,
    ):
        super().__init__()
        self.backbone = backbone
        self.feature = feature
        # DeepLab v1 LargeFOV's `pool5a`: 3x3 average pool, stride 1, pad 1, between pool5 and
        # fc6. Caffe divides by the window clipped to the padded input, always 9 here, i.e.
        # count_include_pad. No parameters, so it changes no weight file.
        self.pool5a = nn.AvgPool2d(3, 1, 1, count_include_pad=True) if pool5a else nn.Identity()
        self.head = head
        # Read by describe.py (Table 1 columns).
        self.kernel_size = kernel_size
        self.rates = tuple(rates)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return self.head.classifier_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.pool5a(self.backbone(x)[self.feature]))


def build_backbone(
    name: str,
    width_mult: float = 1.0,
    stride_in_1x1: bool = False,
    freeze_bn: bool = True,
) -> tuple[nn.Module, str]:
    """The output-stride-8 backbone and the name of the feature map the head reads."""
    if name in ("vgg16", "vgg16_bn"):
        return VGGFeatures(width_mult, batch_norm=name == "vgg16_bn"), "pool5"
    if name == "resnet101":
        return resnet101(width_mult, 8, stride_in_1x1, freeze_bn), "res5"
    raise UserError(f"model.backbone.name={name!r} is unknown; use one of {BACKBONES}")


def assemble_deeplab(
    num_classes: int,
    backbone: Mapping,
    kernel_size: int = 3,
    rates: Sequence[int] = (12,),
    head_width: int = 1024,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    msc: bool = False,
    msc_scales: Sequence[float] = (1.0, 0.75, 0.5),
    pool5a: bool = False,
) -> nn.Module:
    """Builds a DeepLab v2 network from `conf/model/*.yaml` + `conf/backbone/*.yaml`.

    One head branch per rate. On VGG-16 a branch is fc6 (kernel_size, rate, head_width) - fc7 -
    fc8 with dropout; on ResNet-101 it is one kernel_size x kernel_size atrous conv to the classes
    (`head_width` and `dropout` are unused), so the Table 1 `fov_*` rows there become a single
    k x k rate-r classifier. `backbone` holds `name`, `pretrained` (torchvision state dict path
    or None) and for ResNet `stride_in_1x1`, `freeze_bn`. `msc=True` wraps the net in `MSC`.
    `pool5a=True` adds DeepLab v1 LargeFOV's 3x3 average pool (on pool5, or on res5 for ResNet).
    Weights are not read here: `deeplab.weights.networks.build_deeplab` builds this, then loads
    them.
    """
    opts = dict(backbone)
    name = opts.pop("name", None)
    refuse_weight_files(opts)
    allowed = {"resnet101": {"stride_in_1x1", "freeze_bn"}}.get(name, set())
    if set(opts) - allowed:
        raise UserError(
            f"model.backbone has unknown keys {sorted(set(opts) - allowed)} for {name!r}; "
            f"allowed: name, pretrained, {', '.join(sorted(allowed)) or '(nothing else)'}"
        )
    if not numbers(None, positive_int)(list(rates)):
        expected = "a non-empty list of integers >= 1, e.g. model.rates=[12]"
        raise invalid_value("model.rates", rates, expected)
    net, feature = build_backbone(name, width_mult, **opts)
    if isinstance(net, VGGFeatures):
        width = scale_width(head_width, width_mult)
        branches = [
            VGGBranch(net.out_channels, width, num_classes, kernel_size, r, dropout) for r in rates
        ]
    else:
        branches = [ResNetBranch(net.out_channels, num_classes, kernel_size, r) for r in rates]
    model = DeepLab(net, feature, DeepLabHead(branches), kernel_size, rates, pool5a)
    return MSC(model, tuple(msc_scales)) if msc else model
