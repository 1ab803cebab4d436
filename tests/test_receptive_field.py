"""Receptive fields: closed forms, the layer walk, and the gradient probe on real networks."""

import pytest
from torch import nn

from deeplab.models import assemble_deeplab
from deeplab.models.receptive_field import (
    chain_receptive_field,
    effective_kernel,
    gradient_receptive_field,
    paper_fov,
)

VGG = {"name": "vgg16", "pretrained": None}


def test_effective_kernel_and_paper_fov():
    assert [effective_kernel(3, r) for r in (1, 2, 4, 12)] == [3, 5, 9, 25]
    assert effective_kernel(7, 4) == effective_kernel(4, 8) == 25
    # Table 1's FOV column (paper.md §1): 7x7 r4, 4x4 r4, 4x4 r8, 3x3 r12.
    assert [paper_fov(k, r) for k, r in ((7, 4), (4, 4), (4, 8), (3, 12))] == [224, 128, 224, 224]


def test_walk_of_simple_chains():
    assert chain_receptive_field([nn.Conv2d(1, 1, 3, dilation=4)]) == (9, 1)
    pool_then_conv = nn.Sequential(nn.MaxPool2d(2, 2), nn.ReLU(), nn.Conv2d(1, 1, 3, dilation=2))
    assert chain_receptive_field([pool_then_conv]) == (2 + 2 * 2 * 2, 2)


@pytest.mark.parametrize(("kernel", "rate", "field"), [(3, 12, 419), (4, 4, 323)])
def test_probe_matches_walk_on_deeplab_vgg(kernel, rate, field):
    model = assemble_deeplab(7, VGG, kernel_size=kernel, rates=[rate], width_mult=1 / 64)
    walk, jump = chain_receptive_field([model.backbone, model.head.branches[0]])
    probe = gradient_receptive_field(model, 449)
    assert (walk, jump) == (field, 8)
    assert probe.size == (field, field)
    # The field is centred on the logit's stride-8 position (even 4x4 kernels pad symmetrically).
    assert (probe.top + probe.bottom) / 2 == probe.logit_pixel[0] == 224


def test_probe_sees_the_widest_aspp_branch():
    model = assemble_deeplab(7, VGG, rates=[2, 12], width_mult=1 / 64)
    assert [chain_receptive_field([model.backbone, b])[0] for b in model.head.branches] == [
        259,
        419,
    ]
    assert gradient_receptive_field(model, 449).size == (419, 419)


def test_probe_rejects_a_too_small_input():
    model = assemble_deeplab(7, VGG, width_mult=1 / 64)
    with pytest.raises(ValueError, match="larger input_size"):
        gradient_receptive_field(model, 321)


def test_unsupported_layers_are_named():
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(ValueError, match="BatchNorm2d"):
        chain_receptive_field([net])
    with pytest.raises(ValueError, match="BatchNorm2d"):
        gradient_receptive_field(net, 9)
