"""The dense CRF: the torch lattice port against the real pydensecrf, and the callable's contract.

Runs on CPU only (no GPU in CI); the torch code is device-agnostic.
"""

from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deeplab.crf import DenseCRF, refine_many
from deeplab.crf.queue import RefineQueue
from deeplab.crf.search import score
from deeplab.runtime.errors import UserError

NUM_VOC_IMAGES = 5


pytestmark = pytest.mark.usefixtures("one_thread")


def degraded_softmax(mask: np.ndarray, num_classes: int = 21, seed: int = 0) -> np.ndarray:
    """A coarse, noisy "network output" from the truth: one-hot, 8x average-pooled, noised,
    bilinearly upsampled, softmaxed. Ignore (255) pixels, the band along object boundaries,
    vote for background here; scoring leaves them out."""
    g = torch.Generator().manual_seed(seed)
    m = torch.from_numpy(mask.astype(np.int64))
    one_hot = F.one_hot(torch.where(m == 255, 0, m), num_classes)
    low = F.avg_pool2d(one_hot.permute(2, 0, 1).float()[None], 8, ceil_mode=True)
    low = 4 * low + 1.0 * torch.randn(low.shape, generator=g)
    up = F.interpolate(low, size=mask.shape, mode="bilinear", align_corners=False)
    return torch.softmax(up[0], 0).numpy()


@cache
def voc_val(root: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, degraded probs, mask) for the first val images, at full size."""
    voc = root / "VOC2012"
    ids = (voc / "ImageSets/Segmentation/val.txt").read_text().split()[:NUM_VOC_IMAGES]
    out = []
    for i, name in enumerate(ids):
        image = np.array(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        mask = np.array(Image.open(voc / "SegmentationClass" / f"{name}.png"))
        out.append((image, degraded_softmax(mask, seed=i), mask))
    return out


@cache
def refined_voc(root: Path, normalization: str) -> dict:
    data = voc_val(root)
    images, probs = [d[0] for d in data], [d[1] for d in data]
    kw = dict(normalization=normalization)  # the released VGG-16 setting is the default
    return {
        "pydensecrf": refine_many(DenseCRF(backend="pydensecrf", **kw), images, probs, 1),
        "torch": refine_many(DenseCRF(backend="torch", **kw), images, probs),
    }


def test_torch_port_matches_pydensecrf_on_voc(voc_sample_root):
    data = voc_val(voc_sample_root)
    out = refined_voc(voc_sample_root, "symmetric")
    agree = [
        (a.argmax(0) == b.argmax(0)).mean()
        for a, b in zip(out["pydensecrf"], out["torch"], strict=True)
    ]
    masks = [d[2] for d in data]
    unary = score([d[1] for d in data], masks)["mIoU"]
    ref, port = (score(out[k], masks)["mIoU"] for k in ("pydensecrf", "torch"))
    print(
        f"agreement {100 * np.mean(agree):.4f}%, mIoU unary {unary:.2f} "
        f"pydensecrf {ref:.2f} torch {port:.2f}"
    )
    assert np.mean(agree) >= 0.995
    assert abs(ref - port) <= 0.1
    assert ref > unary and port > unary
    # Not merely the same labels: the same marginals, to float precision.
    assert (
        max(np.abs(a - b).max() for a, b in zip(out["pydensecrf"], out["torch"], strict=True))
        < 1e-4
    )


def test_per_pixel_normalisation_matches_pydensecrf(voc_sample_root):
    image, probs, _ = voc_val(voc_sample_root)[0]
    image, probs = image[::2, ::2].copy(), probs[:, ::2, ::2].copy()  # half size: keeps it quick
    kw = dict(normalization="per_pixel", bi_xy_std=25)
    ref = DenseCRF(backend="pydensecrf", **kw)(image, probs)
    port = DenseCRF(backend="torch", **kw)(image, probs)
    assert np.abs(ref - port).max() < 1e-4
    # ... and it is a different CRF from the symmetric one.
    sym = DenseCRF(backend="pydensecrf", bi_xy_std=25)(image, probs)
    assert np.abs(sym - ref).max() > 1e-3


def test_lattice_padding_and_resnet_setting_match_pydensecrf():
    """Odd pixel count (densecrf pads to blocks of 4 with zero features, which add lattice points),
    dark pixels near the origin where that matters, and the ResNet-101 setting (pos_xy_std 1)."""
    rng = np.random.default_rng(0)
    image = rng.integers(2, 12, (37, 41, 3)).astype(np.uint8)
    probs = rng.dirichlet(np.full(5, 0.5), (37, 41)).transpose(2, 0, 1).astype(np.float32)
    for kw in (
        dict(bi_w=10, bi_xy_std=5, bi_rgb_std=3),
        dict(pos_xy_std=1, bi_xy_std=67, bi_rgb_std=3),
    ):
        ref = DenseCRF(backend="pydensecrf", **kw)(image, probs)
        port = DenseCRF(backend="torch", **kw)(image, probs)
        assert np.abs(ref - port).max() < 1e-4


def test_wide_lattice_keys_match_pydensecrf():
    """Keys pack into int32 when the lattice's coordinate ranges allow (VOC with the released
    settings); tiny stds over random colours need the int64 keys, which must give the same CRF."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    probs = rng.dirichlet(np.full(4, 0.5), (24, 32)).transpose(2, 0, 1).astype(np.float32)
    kw = dict(bi_xy_std=1, bi_rgb_std=1)
    ref = DenseCRF(backend="pydensecrf", **kw)(image, probs)
    port = DenseCRF(backend="torch", **kw)(image, probs)
    assert np.abs(ref - port).max() < 1e-4


def small_case(seed: int = 0, size=(48, 64), classes: int = 4):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
    probs = rng.dirichlet(np.ones(classes), size).transpose(2, 0, 1).astype(np.float32)
    return image, probs


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_deterministic_and_normalised(backend):
    image, probs = small_case()
    crf = DenseCRF(backend=backend)
    a, b = crf(image, probs), crf(image.copy(), probs.copy())
    assert np.array_equal(a, b)
    assert a.shape == probs.shape and a.dtype == np.float32
    assert (a >= 0).all() and np.allclose(a.sum(0), 1, atol=1e-5)


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_uniform_image_with_confident_unary_is_unchanged(backend):
    image = np.full((40, 50, 3), 128, np.uint8)
    probs = np.full((3, 40, 50), 0.005, np.float32)
    probs[1] = 0.99
    out = DenseCRF(backend=backend)(image, probs)
    assert (out.argmax(0) == 1).all()
    assert (out[1] >= probs[1] - 1e-6).all()  # smoothing only reinforces a unanimous label


def test_types_and_devices_round_trip():
    image, probs = small_case()
    crf = DenseCRF(backend="torch")
    t = crf(torch.from_numpy(image), torch.from_numpy(probs).half())
    assert (
        isinstance(t, torch.Tensor) and t.dtype == torch.float16 and t.device == torch.device("cpu")
    )
    n = DenseCRF(backend="pydensecrf")(image, torch.from_numpy(probs))
    assert isinstance(n, torch.Tensor) and n.dtype == torch.float32


@pytest.mark.parametrize(
    "image, probs, match",
    [
        (np.zeros((8, 9, 3), np.float32), np.full((2, 8, 9), 0.5, np.float32), "uint8"),
        (np.zeros((8, 9), np.uint8), np.full((2, 8, 9), 0.5, np.float32), r"\(H, W, 3\)"),
        (np.zeros((8, 9, 3), np.uint8), np.full((2, 8, 10), 0.5, np.float32), "differ in size"),
        (np.zeros((8, 9, 3), np.uint8), np.ones((2, 8, 9), np.int64), "floating-point"),
        (np.zeros((8, 9, 3), np.uint8), np.full((8, 9), 0.5, np.float32), r"\(C, H, W\)"),
    ],
)
@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_bad_inputs_raise_clear_errors(backend, image, probs, match):
    with pytest.raises(ValueError, match=match):
        DenseCRF(backend=backend)(image, probs)


def _nan(p):
    p = p.copy()
    p[0, 3, 4] = np.nan
    return p


def _inf(p):
    p = p.copy()
    p[1, 0, 0] = np.inf
    return p


@pytest.mark.parametrize(
    "spoil, kind, match",
    [
        (_nan, "probs", "NaN or inf"),
        (_inf, "logits", "NaN or inf"),
        (lambda p: 3 * p, "probs", "sums are 3..3.*kind=.logits."),  # raw scores passed as probs
        (lambda p: np.log(p), "probs", "Apply softmax over dim 0"),  # log-probs
        (lambda p: p / p.sum((1, 2), keepdims=True), "probs", "summing to 1"),  # wrong axis
        (lambda p: p, "scores", "kind='scores'"),
    ],
)
@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
@pytest.mark.parametrize("tensor", [False, True])
def test_non_softmax_maps_raise_user_errors(backend, spoil, kind, match, tensor):
    image, probs = small_case(size=(8, 9))
    bad = spoil(probs)
    if tensor:
        image, bad = torch.from_numpy(image), torch.from_numpy(bad)
    with pytest.raises(UserError, match=match):
        DenseCRF(backend=backend)(image, bad, kind=kind)
    with pytest.raises(UserError, match=match):
        refine_many(DenseCRF(backend=backend), [image], [bad], num_workers=1, kind=kind)


def test_float16_softmax_is_accepted():
    """Half-precision softmax sums to 1 only within ~1e-3: that must not be refused."""
    image, _ = small_case(size=(8, 9))
    logits = torch.randn(21, 8, 9, generator=torch.Generator().manual_seed(0)) * 5
    DenseCRF(backend="torch")(torch.from_numpy(image), logits.half().softmax(0))


def mean_field_by_hand(scores: np.ndarray, weight: float, iterations: int) -> np.ndarray:
    """Mean field when every pixel has the same scores s and each kernel is normalised per pixel:
    (K q) / (K 1) = q for a q that is the same everywhere, whatever the lattice, so each
    iteration is q <- softmax(s + (pos_w + bi_w) q) with unary -s (no clip)."""
    s = scores.astype(np.float64)
    q = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    for _ in range(iterations):
        e = s + weight * q
        q = np.exp(e - e.max()) / np.exp(e - e.max()).sum()
    return q


@pytest.mark.parametrize("backend", ["pydensecrf", "torch"])
def test_per_pixel_normalisation_and_logits_against_a_hand_computation(backend):
    """DeepLab's C++: unary = -score (no 1e-5 clip: a score of -30, probability 1e-13, matters)
    and each kernel divided by K 1 after filtering. Random colours, so the kernels are far from
    uniform; the symmetric normalisation gives another answer at the borders."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (11, 13, 3)).astype(np.uint8)
    s = np.array([2.0, 1.5, -30.0], np.float32)
    scores = np.broadcast_to(s[:, None, None], (3, 11, 13)).copy()
    kw = dict(pos_w=3, bi_w=4, bi_xy_std=5, iterations=5, normalization="per_pixel")
    want = mean_field_by_hand(s, 3 + 4, 5)
    out = DenseCRF(backend=backend, **kw)(image, scores, kind="logits")
    # Relative: the -30 label's ~1e-17 must come out right too.
    np.testing.assert_allclose(out, np.broadcast_to(want[:, None, None], out.shape), rtol=1e-4)
    # The softmax input is clipped at 1e-5, which raises the -30 label's share by 10^9 ...
    probs = torch.from_numpy(scores).softmax(0).numpy()
    clipped = DenseCRF(backend=backend, **kw)(image, probs)
    assert (clipped[2] > 1e3 * out[2]).all()
    # ... and the symmetric normalisation does not reduce to the hand computation.
    sym = DenseCRF(backend=backend, **{**kw, "normalization": "symmetric"})(image, scores, "logits")
    assert np.abs(sym - out).max() > 1e-4  # float noise: ~1e-7


def test_logits_match_between_backends_on_voc(voc_sample_root):
    """The released setting on DeepLab's unary (-score): the torch port equals pydensecrf."""
    image, probs, _ = voc_val(voc_sample_root)[1]
    image, logits = image[::2, ::2].copy(), 3 * np.log(probs[:, ::2, ::2])
    kw = dict(normalization="per_pixel", bi_xy_std=25)
    ref = DenseCRF(backend="pydensecrf", **kw)(image, logits, kind="logits")
    port = DenseCRF(backend="torch", **kw)(image, logits, kind="logits")
    assert np.abs(ref - port).max() < 1e-4


def test_released_configs_use_deeplabs_normalisation():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(conf), version_base=None):
        for name in ("deeplab_vgg16", "deeplab_resnet101"):
            crf = instantiate(compose(config_name=f"crf/{name}").crf)
            assert crf.normalization == "per_pixel", name


def test_every_shipped_crf_picks_its_backend_by_what_is_installed():
    """`backend: auto`: a machine without pydensecrf (or with a GPU) runs every shipped CRF."""
    from deeplab.crf.dense_crf import default_backend
    from deeplab.runtime.config import CONF_DIR, compose, instantiate

    names = sorted(p.stem for p in (CONF_DIR / "crf").glob("*.yaml") if p.stem != "none")
    assert "deeplab_vgg16" in names and "synthetic" in names
    for name in names:
        cfg = compose("crf_eval", [f"crf={name}"]).crf
        assert cfg.backend == "auto", name
        assert instantiate(cfg).backend == default_backend() in ("torch", "pydensecrf")


def test_bad_settings_raise_clear_errors():
    with pytest.raises(ValueError, match="crf.backend"):
        DenseCRF(backend="cuda")
    with pytest.raises(ValueError, match="crf.normalization"):
        DenseCRF(normalization="before")
    with pytest.raises(ValueError, match="crf.bi_rgb_std"):
        DenseCRF(bi_rgb_std=0)


def test_refine_many_processes_and_batches_match_single_calls():
    cases = [small_case(seed, size) for seed, size in enumerate([(48, 64), (33, 47), (48, 64)])]
    images, probs = [c[0] for c in cases], [c[1] for c in cases]
    for backend, workers in (("pydensecrf", 2), ("torch", None)):
        crf = DenseCRF(backend=backend, bi_xy_std=20)
        many = refine_many(crf, images, probs, num_workers=workers)
        single = [crf(i, p) for i, p in zip(images, probs, strict=True)]
        for m, s in zip(many, single, strict=True):
            np.testing.assert_allclose(m, s, atol=1e-6)


@pytest.mark.parametrize(
    "backend, workers, chunk", [("pydensecrf", 2, 2), ("pydensecrf", 1, 2), ("torch", 1, 3)]
)
def test_refine_queue_returns_what_refine_many_does(backend, workers, chunk):
    """Background processes (pydensecrf, 2 workers) or in-process chunks: the same maps."""
    cases = [small_case(seed, size) for seed, size in enumerate([(24, 32), (17, 23)] * 3)]
    crf = DenseCRF(backend=backend, bi_xy_std=20)
    queue = RefineQueue(crf, workers, chunk, kind="logits", max_pending=3)
    got = {}
    for i, (image, probs) in enumerate(cases):
        got.update(queue.put(i, image, np.log(probs)))
    got.update(queue.drain())
    want = refine_many(crf, [c[0] for c in cases], [np.log(c[1]) for c in cases], 1, kind="logits")
    assert sorted(got) == list(range(len(cases)))
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[i], w, atol=1e-6)


def test_validation_overlaps_the_crf_and_counts_the_same():
    """The module's CRF (network and pydensecrf workers overlapped) gives the confusion matrix of
    refining each image's logits one by one."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader

    from deeplab.data.metrics import confusion_matrix
    from deeplab.engine.lightning_module import SegmentationModule

    g = torch.Generator().manual_seed(0)
    data = []
    for i in range(5):
        mask = torch.zeros(20, 28, dtype=torch.int64)
        mask[4 + i : 14, 6 : 20 - i] = 1 + i % 2
        image = mask[None].float().expand(3, -1, -1) + 0.5 * torch.randn(3, 20, 28, generator=g)
        data.append({"image": image, "mask": mask, "name": f"im{i}"})
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    crf = DenseCRF(bi_xy_std=10, pos_xy_std=1, normalization="per_pixel")
    matrices = []
    for workers in (2, 1):
        module = SegmentationModule(
            net, ["a", "b", "c"], crf=crf, crf_workers=workers, crf_chunk=2, mean=(0.0,) * 3,
            std=(0.02,) * 3,
        )  # fmt: skip
        module.use_crf = True
        trainer = pl.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False,
        )  # fmt: skip
        trainer.validate(module, DataLoader(data, batch_size=2), verbose=False)
        matrices.append(module.confusions["val_crf"])
    want = confusion_matrix(3, 255)
    with torch.no_grad():
        for d in data:
            rgb = module._rgb(d["image"])
            q = crf(rgb, net(d["image"][None])[0], kind="logits")
            want.update(q.argmax(0)[None], d["mask"][None])
    want = want.compute().numpy()
    assert want.sum() == 5 * 20 * 28
    np.testing.assert_array_equal(matrices[0], want)
    np.testing.assert_array_equal(matrices[1], want)
