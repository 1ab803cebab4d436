"""Training and test details of the released Caffe prototxts (paper.md §12), checked by hand."""

import cv2
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

from deeplab.data.transforms import CAFFE_MEAN_RGB, train_transform
from deeplab.engine.losses import segmentation_loss, shrink_labels
from deeplab.engine.pipeline import evaluate, train
from deeplab.engine.test_time import evaluation_network
from deeplab.models import MSC
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError


def random_labels(size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.randint(0, 21, (2, size, size), generator=g)
    mask[torch.rand(mask.shape, generator=g) < 0.2] = 255
    return mask


class Subsample(nn.Module):
    """A known stride-8 "network": the input at every 8th pixel, (n - 1) // 8 + 1 a side, like
    the DeepLab nets' score maps (321 -> 41, 241 -> 31, 161 -> 21, 513 -> 65)."""

    def __init__(self):
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x):
        self.sizes.append(x.shape[-1])
        return x[..., ::8, ::8]


@pytest.mark.parametrize(("crop", "out", "step"), [(321, 41, 8), (321, 21, 16), (513, 65, 8)])
def test_labels_are_shrunk_to_the_score_positions_as_caffe_interp(crop, out, step):
    mask = random_labels(crop)
    assert torch.equal(shrink_labels(mask, (out, out)), mask[:, ::step, ::step])


def test_off_grid_sizes_take_the_nearest_corner_aligned_label():
    mask = torch.arange(10)[None, None, :].expand(1, 4, 10)
    # positions i * 9 / 3 = 0, 3, 6, 9; 9 * 4 / 6 = 6: 0, 1.5 -> 2 (half up), 3, 4.5 -> 5, 6
    assert shrink_labels(mask, (4, 4))[0, 0].tolist() == [0, 3, 6, 9]
    assert shrink_labels(mask, (4, 7))[0, 0].tolist() == [0, 2, 3, 5, 6, 8, 9]


def test_msc_losses_are_the_released_four():
    """fused and scale 1 at 41x41 vs labels[8i]; 0.75 upsampled 31 -> 41 (corners aligned) vs
    labels[8i]; 0.5 at its own 21x21 vs labels[16i]."""
    torch.manual_seed(0)
    net = MSC(Subsample()).train()
    x = torch.randn(2, 21, 321, 321)
    outs = net(x)
    assert net.net.sizes == [321, 241, 161]  # Caffe Interp: shrink 4 zoom 3, shrink 2
    assert [o.shape[-1] for o in outs] == [41, 41, 41, 21]
    small = F.interpolate(x, size=(241, 241), mode="bilinear", align_corners=True)[..., ::8, ::8]
    up = F.interpolate(small, size=(41, 41), mode="bilinear", align_corners=True)
    assert torch.allclose(outs[2], up)
    half = F.interpolate(x, size=(161, 161), mode="bilinear", align_corners=True)[..., ::8, ::8]
    assert torch.allclose(outs[3], half)
    mask = random_labels(321)
    by8, by16 = mask[:, ::8, ::8], mask[:, ::16, ::16]
    expected = sum(
        F.cross_entropy(o, m, ignore_index=255)
        for o, m in zip(outs, [by8, by8, by8, by16], strict=True)
    )
    assert torch.allclose(segmentation_loss(outs, mask), expected)


def test_msc_input_sizes_follow_caffe_interp_for_any_size():
    net = MSC(Subsample(), (1.0, 0.75, 0.5)).eval()
    with torch.no_grad():
        net(torch.randn(1, 1, 323, 323))
    # (323 - 1) // 4 * 3 + 1 = 241 (not int(322 * 0.75) + 1 = 242); (323 - 1) // 2 + 1 = 162
    assert net.net.sizes == [323, 241, 162]


def caffe_bilinear(grid: torch.Tensor, size: int) -> torch.Tensor:
    """Caffe's interp.cpp, written out: output i reads input i (n - 1) / (size - 1)."""
    n = grid.shape[-1]
    out = torch.empty(*grid.shape[:-2], size, size, dtype=grid.dtype)
    for y in range(size):
        for x in range(size):
            ry, rx = y * (n - 1) / (size - 1), x * (n - 1) / (size - 1)
            y0, x0 = int(ry), int(rx)
            y1, x1 = min(y0 + 1, n - 1), min(x0 + 1, n - 1)
            ly, lx = ry - y0, rx - x0
            out[..., y, x] = (1 - ly) * ((1 - lx) * grid[..., y0, x0] + lx * grid[..., y0, x1]) + (
                ly * ((1 - lx) * grid[..., y1, x0] + lx * grid[..., y1, x1])
            )
    return out


@torch.no_grad()
def test_pad_to_is_the_released_test_protocol_by_hand():
    image = torch.randn(1, 2, 10, 13, dtype=torch.float64)
    padded = torch.zeros(1, 2, 17, 17, dtype=torch.float64)  # the mean colour is 0 normalized
    padded[..., :10, :13] = image
    scores = padded[..., ::8, ::8]  # the "network": 3x3 scores at stride 8
    expected = caffe_bilinear(scores, 17)[..., :10, :13]  # Interp zoom 8: 3 -> 17, then crop
    got = evaluation_network(Subsample(), 2, pad_to=17)(image)
    assert got.shape == (1, 2, 10, 13)
    assert torch.allclose(got, expected, atol=1e-12)
    assert isinstance(
        evaluation_network(Subsample(), 2, pad_to=None), Subsample
    )  # default: unchanged
    with pytest.raises(UserError, match=r"tta.pad_to=17 is smaller than a 10x18 image.*pad_to=25"):
        evaluation_network(Subsample(), 2, pad_to=17)(torch.zeros(1, 2, 10, 18))


@pytest.mark.parametrize("config", ["train", "evaluate", "predict"])
def test_pad_to_composes_for_every_entry_point(config):
    cfg = compose(config, ["tta.pad_to=513"])
    assert cfg.tta.pad_to == 513 and set(cfg.tta) == {"scales", "flip", "tile", "overlap", "pad_to"}


def test_discrete_scaling_is_caffes_resize():
    """Caffe's TransformImgAndSeg: size int(side * s), cv::resize bilinear (image) and nearest
    (label), then padding (mean / 255) and the crop."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (333, 301, 3), dtype=np.uint8)
    mask = rng.integers(0, 21, (333, 301), dtype=np.uint8)
    size = (int(301 * 0.75), int(333 * 0.75))  # (225, 249): truncated, as `img_height *= scale`
    transform = train_transform(
        249, CAFFE_MEAN_RGB, scale_mode="discrete", scales=[0.75], flip=False
    )
    out = transform(image=image, mask=mask)
    assert out["image"].shape == (249, 249, 3)
    np.testing.assert_array_equal(
        out["image"][:, :225], cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    )
    np.testing.assert_array_equal(
        out["mask"][:, :225], cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    )
    assert (out["mask"][:, 225:] == 255).all()
    assert (out["image"][:, 225:] == np.float32(CAFFE_MEAN_RGB)).all()


class NetTypes(pl.Callback):
    """Records the network each validation runs."""

    def __init__(self):
        self.seen: list[str] = []

    def on_validation_start(self, trainer, pl_module):
        self.seen.append(type(pl_module.net).__name__)


@pytest.mark.slow
def test_training_ends_with_a_validation_under_the_test_protocol(tmp_path):
    smoke = ["debug=smoke", "data=synthetic", "data.num_train=8", "data.num_val=3"]
    common = [*smoke, f"data_dir={tmp_path / 'data'}", "tta.pad_to=129"]  # 128 px images
    types = NetTypes()
    trained = train(compose("train", [*common, "logger=csv"]), tmp_path / "train", [types])
    assert types.seen == ["DeepLab", "PadTo"]  # plain during training, padded at the end
    ckpt = f"ckpt_path={tmp_path / 'train' / 'checkpoints' / 'last.ckpt'}"
    padded = evaluate(compose("evaluate", [*common, ckpt]), tmp_path / "padded")
    assert trained["val/IoU"] == pytest.approx(padded["val/IoU"])
