"""Atrous convolution: dilation and space-to-batch agree, in values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from deeplab.models import assemble_deeplab, atrous
from deeplab.models.atrous import AtrousConv2d, set_atrous_mode, space_to_batch_conv2d

# (kernel, rate, height, width): odd / even kernels, sizes divisible by the rate or not,
# a rate larger than the map (ASPP rate 24 on a small map), the asymmetric even-kernel padding.
CASES = [(3, 2, 9, 9), (4, 4, 11, 7), (7, 4, 13, 10), (4, 3, 8, 9), (3, 12, 5, 6), (2, 5, 7, 7)]


@pytest.mark.parametrize(("kernel", "rate", "h", "w"), CASES)
def test_modes_agree_in_values_and_gradients(kernel, rate, h, w):
    torch.manual_seed(0)
    conv = AtrousConv2d(3, 5, kernel, rate=rate).double()
    x = torch.randn(2, 3, h, w, dtype=torch.double, requires_grad=True)
    results = {}
    for mode in ("dilation", "space_to_batch"):
        conv.mode = mode
        assert conv.uses_space_to_batch(x) == (mode == "space_to_batch")
        y = conv(x)
        grads = torch.autograd.grad(
            (y * torch.arange(y.numel()).view_as(y)).sum(), [x, *conv.parameters()]
        )
        results[mode] = (y, *grads)
    assert results["dilation"][0].shape == (2, 5, h, w)  # spatial size kept at stride 1
    for a, b in zip(results["dilation"], results["space_to_batch"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_space_to_batch_matches_padded_dilated_conv_float32():
    torch.manual_seed(1)
    x, weight, bias = torch.randn(1, 8, 10, 13), torch.randn(6, 8, 4, 4), torch.randn(6)
    # 4x4 at rate 3: total padding 9, split 4 before / 5 after.
    want = F.conv2d(F.pad(x, (4, 5, 4, 5)), weight, bias, dilation=3)
    got = space_to_batch_conv2d(x, weight, bias, rate=3, before=4, after=5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rate_one_and_strided_layers_never_use_space_to_batch():
    x = torch.randn(1, 2, 8, 8)
    assert not AtrousConv2d(2, 2, 3, rate=1, mode="space_to_batch").uses_space_to_batch(x)
    assert not AtrousConv2d(2, 2, 3, rate=2, stride=2, mode="space_to_batch").uses_space_to_batch(x)


def test_auto_follows_the_measured_table(monkeypatch):
    conv, x = AtrousConv2d(2, 2, 3, rate=2), torch.randn(1, 2, 8, 8)
    assert conv.mode == "auto" and not conv.uses_space_to_batch(x)  # CPU: dilation measured faster
    monkeypatch.setitem(atrous.AUTO_MODE, "cpu", "space_to_batch")
    assert conv.uses_space_to_batch(x)


def test_set_atrous_mode_switches_a_whole_network_without_changing_its_output():
    torch.manual_seed(0)
    net = assemble_deeplab(3, {"name": "vgg16"}, rates=[2, 4], width_mult=0.0625).eval()
    x = torch.randn(1, 3, 33, 33)
    assert set_atrous_mode(net, "dilation") == 13 + 2  # every VGG conv and the two fc6
    with torch.no_grad():
        want = net(x)
        set_atrous_mode(net, "space_to_batch")
        torch.testing.assert_close(net(x), want, rtol=1e-4, atol=1e-5)


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="atrous_mode"):
        AtrousConv2d(2, 2, 3, rate=2, mode="holes")
    with pytest.raises(ValueError, match="atrous_mode"):
        set_atrous_mode(torch.nn.Sequential(), "fast")
