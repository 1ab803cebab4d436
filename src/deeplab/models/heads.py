"""DeepLab v2 heads: one branch per atrous rate, branch outputs summed (LargeFOV = one branch)."""

from collections import OrderedDict

from torch import Tensor, nn

from deeplab.models.atrous import AtrousConv2d


def _init_classifier(conv: nn.Conv2d) -> None:
    """DeepLab's classifier init: Gaussian std 0.01, bias 0."""
    nn.init.normal_(conv.weight, 0.0, 0.01)
    nn.init.zeros_(conv.bias)


class VGGBranch(nn.Sequential):
    """fc6 (k x k, rate r) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (classes)."""

    def __init__(
        self,
        in_ch: int,
        width: int,
        num_classes: int,
        kernel_size: int,
        rate: int,
        dropout: float,
        padding: int | None = None,  # fc6 padding; None keeps the size (FCN uses 0)
    ):
        super().__init__(
            OrderedDict(
                fc6=AtrousConv2d(in_ch, width, kernel_size, rate=rate, padding=padding),
                relu6=nn.ReLU(inplace=True),
                drop6=nn.Dropout(dropout),
                fc7=nn.Conv2d(width, width, 1),
                relu7=nn.ReLU(inplace=True),
                drop7=nn.Dropout(dropout),
                fc8=nn.Conv2d(width, num_classes, 1),
            )
        )
        for conv in (self.fc6, self.fc7):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        _init_classifier(self.fc8)

    @property
    def classifier(self) -> nn.Conv2d:
        return self.fc8


class ResNetBranch(nn.Sequential):
    """One k x k atrous conv straight to the classes (DeepLab v2's ResNet `fc1_*` layers)."""

    def __init__(self, in_ch: int, num_classes: int, kernel_size: int, rate: int):
        super().__init__(OrderedDict(conv=AtrousConv2d(in_ch, num_classes, kernel_size, rate=rate)))
        _init_classifier(self.conv)

    @property
    def classifier(self) -> nn.Conv2d:
        return self.conv


class DeepLabHead(nn.Module):
    """Parallel branches at different rates on one feature map, summed (ASPP when > 1 branch)."""

    def __init__(self, branches: list[nn.Module]):
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def classifier_parameters(self) -> list[nn.Parameter]:
        return [p for b in self.branches for p in b.classifier.parameters()]

    def forward(self, x: Tensor) -> Tensor:
        return sum(b(x) for b in self.branches)
