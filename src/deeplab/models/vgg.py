"""VGG-16 convolutional stages, configurable for DeepLab (atrous, OS 8) and FCN (plain, OS 32)."""

from collections import OrderedDict

from torch import Tensor, nn

from deeplab.models.atrous import AtrousConv2d
from deeplab.models.width import scale_width

# (output channels, number of 3x3 convs) of VGG-16's five stages.
VGG16_STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGGFeatures(nn.Module):
    """conv1_1 ... pool5 of VGG-16; `forward` returns every pool output by name.

    DeepLab (the defaults): 3x3 max-pools with pad 1 and strides 2, 2, 2, 1, 1, conv5 at
    dilation 2, so pool5 is at output stride 8. FCN: `pool_kernel=2, pool_strides=(2,)*5,
    pool_padding=0, conv5_dilation=1, conv1_padding=100` (output stride 32). Pools round up
    (`ceil_mode`) as Caffe does. Modules are named `stageN.convN_M`, `stageN.poolN`.
    `batch_norm=True` puts a BatchNorm after every conv, as torchvision's `vgg16_bn` does: not the
    paper's network, but a plain 13-conv stack trained from scratch (the CPU demo) learns in far
    fewer steps with it.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        pool_kernel: int = 3,
        pool_strides: tuple[int, ...] = (2, 2, 2, 1, 1),
        pool_padding: int = 1,
        conv5_dilation: int = 2,
        conv1_padding: int | None = None,
        batch_norm: bool = False,
    ):
        super().__init__()
        if len(pool_strides) != len(VGG16_STAGES):
            raise ValueError(f"pool_strides needs 5 values, got {pool_strides}")
        in_ch = 3
        self.stages = nn.ModuleDict()
        for s, ((channels, n_convs), stride) in enumerate(
            zip(VGG16_STAGES, pool_strides, strict=True), start=1
        ):
            out_ch = scale_width(channels, width_mult)
            rate = conv5_dilation if s == 5 else 1
            layers = OrderedDict()
            for m in range(1, n_convs + 1):
                padding = conv1_padding if (s, m) == (1, 1) else None
                layers[f"conv{s}_{m}"] = AtrousConv2d(in_ch, out_ch, 3, rate=rate, padding=padding)
                if batch_norm:
                    layers[f"bn{s}_{m}"] = nn.BatchNorm2d(out_ch)
                layers[f"relu{s}_{m}"] = nn.ReLU(inplace=True)
                in_ch = out_ch
            layers[f"pool{s}"] = nn.MaxPool2d(pool_kernel, stride, pool_padding, ceil_mode=True)
            self.stages[f"stage{s}"] = nn.Sequential(layers)
        self.out_channels = in_ch
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = {}
        for s, stage in enumerate(self.stages.values(), start=1):
            x = stage(x)
            out[f"pool{s}"] = x
        return out
