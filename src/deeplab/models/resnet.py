"""ResNet-101 with frozen BatchNorm, selectable stride placement and atrous res4/res5."""

from torch import Tensor, nn

from deeplab.models.atrous import AtrousConv2d
from deeplab.models.width import scale_width

RESNET101_BLOCKS = (3, 4, 23, 3)
# Output stride -> dilation of res2..res5 (a stage at dilation > 1 keeps stride 1).
DILATIONS = {8: (1, 1, 2, 4), 16: (1, 1, 1, 2), 32: (1, 1, 1, 1)}


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (atrous) -> 1x1 residual block, 4x expansion, convolutions without bias.

    `stride_in_1x1=True` puts a block's stride on the first 1x1 conv as Caffe/MSRA ResNets do;
    False puts it on the 3x3 as torchvision does. Load weights with the layout they came from.
    """

    expansion = 4

    def __init__(self, in_ch: int, planes: int, stride: int, dilation: int, stride_in_1x1: bool):
        super().__init__()
        out_ch = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_ch, planes, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = AtrousConv2d(planes, planes, 3, rate=dilation, stride=s3, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet stem + four stages; `forward` returns `res2`..`res5` by name.

    Module names follow torchvision (`conv1`, `bn1`, `layer1`..`layer4`, `downsample.0/.1`), so
    a torchvision state dict loads key for key. With `freeze_bn` every BatchNorm uses its stored
    statistics, its affine parameters have requires_grad False, and it stays in eval mode
    whatever `.train()` is called (DeepLab's `use_global_stats: true`, lr_mult 0).
    """

    def __init__(
        self,
        blocks: tuple[int, ...] = RESNET101_BLOCKS,
        width_mult: float = 1.0,
        output_stride: int = 8,
        stride_in_1x1: bool = False,
        freeze_bn: bool = True,
    ):
        super().__init__()
        if output_stride not in DILATIONS:
            raise ValueError(f"ResNet output_stride must be one of {sorted(DILATIONS)}")
        stem = scale_width(64, width_mult)
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        in_ch = stem
        for i, (n, dilation) in enumerate(zip(blocks, DILATIONS[output_stride], strict=True)):
            planes = scale_width(64 * 2**i, width_mult)
            stride = 2 if i > 0 and dilation == 1 else 1
            layer = []
            for b in range(n):
                layer.append(
                    Bottleneck(in_ch, planes, stride if b == 0 else 1, dilation, stride_in_1x1)
                )
                in_ch = planes * Bottleneck.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.out_channels = in_ch
        self.freeze_bn = freeze_bn
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
                m.requires_grad_(not freeze_bn)
        # Without ImageNet weights a frozen (identity) BN normalises nothing and every block
        # doubles the activations' variance (res5 ~1e4 at random init: the loss is NaN after
        # one step). Scaling each residual branch by 1/sqrt(#blocks) bounds the growth by e.
        blocks = [m for m in self.modules() if isinstance(m, Bottleneck)]
        for block in blocks:
            nn.init.constant_(block.bn3.weight, len(blocks) ** -0.5)
        self.train()

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        out = {}
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out[f"res{i + 1}"] = x
        return out


def resnet101(
    width_mult: float = 1.0,
    output_stride: int = 8,
    stride_in_1x1: bool = False,
    freeze_bn: bool = True,
) -> ResNet:
    """ResNet-101; output stride 8 is DeepLab's (res4 dilation 2, res5 dilation 4)."""
    return ResNet(RESNET101_BLOCKS, width_mult, output_stride, stride_in_1x1, freeze_bn)
