"""DeepLab v2 networks: VGG-16 / ResNet-101 backbones, atrous heads, MSC, pretrained init;
FCN-8s and RefineNet for comparison."""

from deeplab.models.atrous import AtrousConv2d
from deeplab.models.deeplab import DeepLab, assemble_deeplab, build_backbone
from deeplab.models.fcn import FCN, assemble_fcn
from deeplab.models.msc import MSC
from deeplab.models.refinenet import RefineNet, assemble_refinenet
from deeplab.models.resnet import ResNet, resnet101
from deeplab.models.table1_columns import count_parameters
from deeplab.models.vgg import VGGFeatures

__all__ = [
    "MSC",
    "AtrousConv2d",
    "FCN",
    "DeepLab",
    "RefineNet",
    "ResNet",
    "VGGFeatures",
    "build_backbone",
    "assemble_deeplab",
    "assemble_fcn",
    "assemble_refinenet",
    "count_parameters",
    "resnet101",
]
