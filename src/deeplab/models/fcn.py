"""FCN-32s / 16s / 8s (Long, Shelhamer, Darrell; paper.md §9): VGG-16 class scores from pool5 (via
fc6 - fc7), pool4 and pool3, fused by sum while upsampling back to the input size.

Arbitrary input sizes: we keep the original's 100-pixel padding of conv1_1 and Caffe's crops.
The padding makes every map large enough to crop from for any input of 1 pixel or more, so the
7x7 fc6 (pad 0) of the converted ImageNet classifier always fits and the score maps line up
exactly; the crop offsets (8s: 5, 9, 31) follow from the layer geometry (`crop_offsets`) and do
not depend on the input size. Dropping the trick would need 'same' padding on fc6 and padding
the input to a multiple of 32, which changes what the pretrained fc6 sees near the borders.
"""

from torch import Tensor, nn

from deeplab.models.fixed_backbone import fixed_backbone_options
from deeplab.models.heads import VGGBranch
from deeplab.models.msc import MSC
from deeplab.models.upsample import make_upsampler
from deeplab.models.vgg import VGGFeatures
from deeplab.models.width import scale_width
from deeplab.runtime.errors import UserError

FCN_PAD = 100  # conv1_1 padding
SKIPS = {32: (), 16: ("pool4",), 8: ("pool4", "pool3")}  # model.stage -> skip layers, deep first
AT_ONCE_SCALES = {"pool4": 0.01, "pool3": 1e-4}  # voc-fcn8s-atonce scales the pools before scoring
LEARN_UPSAMPLING = ("none", "intermediate", "all")  # reference code / CVPR paper / everything


def _pool_grid(level: int) -> tuple[int, float]:
    """(stride, input coordinate of index 0) of poolN's output.

    conv1_1 centres index 0 on input pixel 1 - 100; the other 3x3 convs pad 1 and keep the grid;
    each 2x2 / 2 pool moves index 0 half a step of the grid it pools.
    """
    stride = 2**level
    return stride, 1 - FCN_PAD + (stride - 1) / 2


def _upsampled(stride: int, origin: float, factor: int) -> tuple[int, float]:
    """The grid after a kernel 2f, stride f transposed conv (and `ResizeConv`, same grid)."""
    stride //= factor
    return stride, origin - stride * (2 * factor - 1) / 2


def crop_offsets(stage: int) -> tuple[int, ...]:
    """Caffe's crop offsets: one per skip (where its scores are cut to line up with the
    upsampled scores), then the final one (where the output is cut to the input's pixels).
    FCN-8s: (5, 9, 31), FCN-16s: (5, 27), FCN-32s: (19,), as in the reference prototxts."""
    stride, origin = _pool_grid(5)
    origin += 3 * stride  # fc6: 7x7, pad 0
    offsets = []
    for skip in SKIPS[stage]:
        skip_stride, skip_origin = _pool_grid(int(skip[-1]))
        stride, origin = _upsampled(stride, origin, stride // skip_stride)
        offsets.append((origin - skip_origin) / stride)
    offsets.append(-_upsampled(stride, origin, stride)[1])
    assert all(o >= 0 and o == int(o) for o in offsets), offsets
    return tuple(int(o) for o in offsets)


def _crop(x: Tensor, offset: int, size) -> Tensor:
    """Caffe's Crop layer; the 100-pixel padding makes every map big enough for any input."""
    h, w = size
    return x[..., offset : offset + h, offset : offset + w]


def _out_channels(stage: nn.Sequential) -> int:
    return [m for m in stage if isinstance(m, nn.Conv2d)][-1].out_channels


class FCN(nn.Module):
    """Image (B, 3, H, W) -> logits (B, C, H, W), any H, W.

    `head` is fc6 (7x7, pad 0) - fc7 - score_fr (named fc8 as in the DeepLab heads). Module names
    follow the reference net by role: `score_pool.pool4`, `upscore.2` (upscore2), `upscore.pool4`
    (upscore_pool4), `upscore.8` (upscore8; `upscore.16` / `upscore.32` for the other stages),
    so a stage's checkpoint initialises the next stage's shared layers by name.

    `stage`: 32, 16 or 8 (skips from none, pool4, pool4 + pool3). `upsampling`: "transposed"
    (bilinear-initialised, the original) or "resize_conv". `learn_upsampling` (transposed only):
    "none" freezes all (reference code), "intermediate" learns all but the last (CVPR paper),
    "all". `at_once` scales pool4 by 0.01 and pool3 by 1e-4 before scoring.
    """

    def __init__(
        self,
        backbone: VGGFeatures,
        head: VGGBranch,
        num_classes: int,
        stage: int = 8,
        upsampling: str = "transposed",
        learn_upsampling: str = "none",
        at_once: bool = False,
    ):
        super().__init__()
        if stage not in SKIPS:
            raise UserError(f"model.stage={stage} is unknown; use 32, 16 or 8 (FCN-32s/16s/8s)")
        if learn_upsampling not in LEARN_UPSAMPLING:
            raise UserError(
                f"model.learn_upsampling={learn_upsampling!r} is unknown; use one of "
                f"{LEARN_UPSAMPLING}"
            )
        self.backbone, self.head, self.stage = backbone, head, stage
        self.skips = SKIPS[stage]
        self.offsets = crop_offsets(stage)
        self.skip_scales = {s: AT_ONCE_SCALES[s] if at_once else 1.0 for s in self.skips}
        self.score_pool = nn.ModuleDict(
            {
                s: nn.Conv2d(_out_channels(backbone.stages[f"stage{s[-1]}"]), num_classes, 1)
                for s in self.skips
            }
        )
        for conv in (*self.score_pool.values(), head.fc8):  # FCN zero-initialises every score
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        self.upscore = nn.ModuleDict()
        for name in ("2", *self.skips[:-1]) if self.skips else ():
            learn = learn_upsampling != "none"
            self.upscore[name] = make_upsampler(upsampling, num_classes, 2, learn)
        final = make_upsampler(upsampling, num_classes, stage, learn_upsampling == "all")
        self.upscore[str(stage)] = final

    def classifier_parameters(self) -> list[nn.Parameter]:
        """score_fr and the skip score layers."""
        convs = [self.head.fc8, *self.score_pool.values()]
        return [p for conv in convs for p in conv.parameters()]

    def forward(self, x: Tensor) -> Tensor:
        features = self.backbone(x)
        score = self.head(features["pool5"])
        upsamplers = list(self.upscore.values())
        for up, skip, offset in zip(upsamplers, self.skips, self.offsets, strict=False):
            score = up(score)
            skip_score = self.score_pool[skip](features[skip] * self.skip_scales[skip])
            score = score + _crop(skip_score, offset, score.shape[-2:])
        return _crop(upsamplers[-1](score), self.offsets[-1], x.shape[-2:])


def assemble_fcn(
    num_classes: int,
    backbone: dict,
    fc_width: int = 4096,
    dropout: float = 0.5,
    width_mult: float = 1.0,
    msc: bool = False,
    msc_scales: tuple[float, ...] = (1.0, 0.75, 0.5),
    **options,
) -> nn.Module:
    """FCN from `conf/model/fcn8s.yaml`: VGG-16 with 2x2 pools, no dilation, conv1_1 pad 100.

    `options` are `FCN`'s (stage, upsampling, learn_upsampling, at_once). `msc=True` wraps the
    network in `MSC` as for DeepLab. Weights (`backbone.pretrained`, `init_from`) are loaded by
    `deeplab.weights.networks.build_fcn`.
    """
    fixed_backbone_options(backbone, "vgg16", "fcn8s")
    features = VGGFeatures(
        width_mult,
        pool_kernel=2,
        pool_strides=(2,) * 5,
        pool_padding=0,
        conv5_dilation=1,
        conv1_padding=FCN_PAD,
    )
    width = scale_width(fc_width, width_mult)
    head = VGGBranch(features.out_channels, width, num_classes, 7, 1, dropout, padding=0)
    net = FCN(features, head, num_classes, **options)
    return MSC(net, tuple(msc_scales)) if msc else net
