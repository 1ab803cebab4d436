"""RefineNet (Lin, Milan, Shen, Reid, CVPR 2017; paper.md §10): a 4-cascade of refinement blocks
over ResNet-101's res5, res4, res3, res2, giving logits at 1/4 of the input.

RefineNet-4 refines res5 alone; RefineNet-k (k = 3, 2, 1) refines res(k+1) together with the
output of RefineNet-(k+1). As in the released code, the per-path RCUs run on the ResNet path;
the coarser block's output enters the fusion directly, having just gone through its own output
RCUs. Odd sizes: the ResNet halves with rounding up (321 -> 161 -> 81 -> 41 -> 21 -> 11), and
the fusion resizes the coarser path to the finer path's exact size (bilinear, corners aligned,
as the port does), so the logits have res2's size, ceil(H / 2) // 2 + 1 per side (the stem's
round-up max-pool): 321 -> 81, 500 x 375 -> 126 x 95. The loss shrinks the labels to it.
"""

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.models.fixed_backbone import fixed_backbone_options
from deeplab.models.heads import _init_classifier
from deeplab.models.msc import MSC
from deeplab.models.resnet import ResNet, resnet101
from deeplab.models.width import scale_width
from deeplab.runtime.config_checks import invalid_value, numbers, positive_int

# RefineNet-k and the ResNet stage it refines, coarsest first (the cascade's order).
LEVELS = (("refine4", "res5"), ("refine3", "res4"), ("refine2", "res3"), ("refine1", "res2"))


def _conv3x3(in_ch: int, out_ch: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)


class RCU(nn.Module):
    """Residual convolution unit: ReLU - 3x3 conv - ReLU - 3x3 conv, plus the input; no BN.
    The first conv has a bias, the second not (as in the released model)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = _conv3x3(channels, channels, bias=True)
        self.conv2 = _conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiResolutionFusion(nn.Module):
    """A 3x3 conv per path to the smallest width, bilinear upsampling to the largest
    resolution, sum. A single path passes through unchanged (RefineNet-4)."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.out_channels = min(channels)
        convs = [_conv3x3(c, self.out_channels) for c in channels] if len(channels) > 1 else []
        self.convs = nn.ModuleList(convs)

    def forward(self, paths: list[Tensor]) -> Tensor:
        if not self.convs:
            return paths[0]
        size = max((p.shape[-2:] for p in paths), key=lambda s: s[0] * s[1])
        out = 0
        for conv, path in zip(self.convs, paths, strict=True):
            y = conv(path)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=True)
            out = out + y
        return out


class ChainedResidualPooling(nn.Module):
    """ReLU, then a chain of (5x5 max-pool, stride 1 -> 3x3 conv) stages: each stage pools the
    previous stage's output and every stage's output is added to the main path."""

    def __init__(self, channels: int, stages: int):
        super().__init__()
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(_conv3x3(channels, channels) for _ in range(stages))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        top = x
        for conv in self.convs:
            top = conv(self.pool(top))
            x = x + top
        return x


class RefineNetBlock(nn.Module):
    """Adapt the ResNet features (3x3 conv to `width`, then RCUs), fuse them with the coarser
    block's output, chained residual pooling, output RCUs."""

    def __init__(
        self,
        in_ch: int,
        width: int,
        coarser_ch: int | None,
        path_rcus: int,
        crp_stages: int,
        output_rcus: int,
    ):
        super().__init__()
        rcus = [RCU(width) for _ in range(path_rcus)]
        self.adapt = nn.Sequential(_conv3x3(in_ch, width), *rcus)
        self.fusion = MultiResolutionFusion([width] + ([coarser_ch] if coarser_ch else []))
        self.out_channels = self.fusion.out_channels
        self.crp = ChainedResidualPooling(self.out_channels, crp_stages)
        self.output = nn.Sequential(*(RCU(self.out_channels) for _ in range(output_rcus)))

    def forward(self, x: Tensor, coarser: Tensor | None = None) -> Tensor:
        paths = [self.adapt(x)] + ([coarser] if coarser is not None else [])
        return self.output(self.crp(self.fusion(paths)))


class RefineNet(nn.Module):
    """Image (B, 3, H, W) -> logits (B, C, h, w) at res2's size (about H / 4: module docstring).

    `widths` are RefineNet-4..1's widths (512, 256, 256, 256). Dropout hits res5 and res4 and
    the final features before the 3x3 classifier, as in the released model. `final_rcus` adds
    RCUs before the classifier (the CVPR paper's 2 extra; 0 in the released code).
    `backbone_lr_mult` scales the ResNet's learning rate in the optimiser (0.1 in RN-C).
    """

    def __init__(
        self,
        backbone: ResNet,
        num_classes: int,
        widths: Sequence[int] = (512, 256, 256, 256),
        path_rcus: int = 2,
        crp_stages: int = 4,
        output_rcus: int = 3,
        final_rcus: int = 0,
        dropout: float = 0.5,
        backbone_lr_mult: float = 1.0,
    ):
        super().__init__()
        if not numbers(len(LEVELS), positive_int)(list(widths)):
            expected = "4 integers >= 1 (RefineNet-4..1), e.g. model.widths=[512,256,256,256]"
            raise invalid_value("model.widths", widths, expected)
        self.backbone = backbone
        self.backbone_lr_mult = backbone_lr_mult  # read by deeplab.engine.optimizer
        self.blocks = nn.ModuleDict()
        coarser = None
        for (name, feature), width in zip(LEVELS, widths, strict=True):
            in_ch = getattr(backbone, f"layer{int(feature[-1]) - 1}")[-1].conv3.out_channels
            block = RefineNetBlock(in_ch, width, coarser, path_rcus, crp_stages, output_rcus)
            self.blocks[name] = block
            coarser = block.out_channels
        self.dropout = nn.Dropout(dropout)
        self.final = nn.Sequential(*(RCU(coarser) for _ in range(final_rcus)))
        self.classifier = _conv3x3(coarser, num_classes, bias=True)
        _init_classifier(self.classifier)  # N(0, 0.01): PyTorch's default init at full width

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.classifier.parameters())

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        out = None
        for (_, feature), block in zip(LEVELS, self.blocks.values(), strict=True):
            f = features[feature]
            out = block(self.dropout(f) if feature in ("res5", "res4") else f, out)
        return self.classifier(self.dropout(self.final(out)))


def assemble_refinenet(
    num_classes: int,
    backbone: dict,
    widths: Sequence[int] = (512, 256, 256, 256),
    width_mult: float = 1.0,
    msc: bool = False,
    msc_scales: Sequence[float] = (1.0, 0.75, 0.5),
    **options,
) -> nn.Module:
    """RefineNet from `conf/model/refinenet.yaml` on ResNet-101 at output stride 32 (no atrous).

    `options` are `RefineNet`'s (path_rcus, crp_stages, output_rcus, final_rcus, dropout,
    backbone_lr_mult).
    `stride_in_1x1` and `freeze_bn` work as for DeepLab (frozen BN is RefineNet's "global" BN
    statistics); `deeplab.weights.networks.build_refinenet` loads `backbone.pretrained`.
    """
    opts = fixed_backbone_options(
        backbone, "resnet101", "refinenet", ("stride_in_1x1", "freeze_bn")
    )
    resnet = resnet101(width_mult, output_stride=32, **opts)
    net = RefineNet(resnet, num_classes, [scale_width(w, width_mult) for w in widths], **options)
    return MSC(net, tuple(msc_scales)) if msc else net
