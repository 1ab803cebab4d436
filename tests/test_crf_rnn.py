"""CRF-RNN: exact gradients, batching, autocast, learning, and equality with the post-hoc CRF."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.func import functional_call

from deeplab.crf import CRFRNN, DenseCRF

NORMALIZATIONS = ("per_pixel", "symmetric")
LEARNABLE = ("pos_w", "bi_w", "compatibility")


pytestmark = pytest.mark.usefixtures("one_thread")


def random_case(batch=2, classes=3, size=(6, 7), seed=0, dtype=torch.float32):
    """Random scores and random colours: kernels far from uniform, so every term matters."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(batch, classes, *size, generator=g, dtype=dtype)
    images = torch.randint(0, 256, (batch, 3, *size), generator=g).to(dtype)
    return logits, images


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradcheck_float64_scores_and_every_parameter(normalization, seed):
    logits, images = random_case(dtype=torch.float64)
    layer = CRFRNN(3, iterations=2, bi_xy_std=4, bi_rgb_std=40, normalization=normalization)
    layer = layer.double()
    with torch.no_grad():  # away from Potts, so the compatibility's rows differ
        shift = torch.randn(
            3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
        layer.compatibility.add_(0.3 * shift)
    params = {name: p.detach().clone().requires_grad_() for name, p in layer.named_parameters()}
    assert set(params) == set(LEARNABLE)

    def run(scores, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (scores, images))

    inputs = (logits.requires_grad_(), *params.values())
    # the lattice geometry is float32 (as the post-hoc CRF), so agreement stops near 1e-7
    assert torch.autograd.gradcheck(run, inputs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradcheck_matrix_kernel_weights(normalization):
    """The authors' parameterisation: exact gradients of the scores and of both kernels' C x C
    weight matrices, moved off the diagonal so that every entry matters."""
    logits, images = random_case(dtype=torch.float64, seed=2)
    layer = CRFRNN(
        3,
        iterations=2,
        bi_xy_std=4,
        bi_rgb_std=40,
        normalization=normalization,
        kernel_weights="matrix",
    ).double()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=torch.float64, generator=g))
    params = {name: p.detach().clone().requires_grad_() for name, p in layer.named_parameters()}
    assert set(params) == set(LEARNABLE) and params["bi_w"].shape == (3, 3)

    def run(scores, *values):
        return functional_call(layer, dict(zip(params, values, strict=True)), (scores, images))

    inputs = (logits.requires_grad_(), *params.values())
    assert torch.autograd.gradcheck(run, inputs, atol=1e-6, rtol=1e-5)


def test_matrix_kernel_weights_start_as_the_scalar_layer_on_voc(voc_sample_root):
    """W_k = w_k I at the start: on a real VOC image with random scores, the same scores (to
    float32 rounding) and the same labels as the scalar layer, in training (5 iterations) and
    at test (10); and both CRFs changed labels, so the equality is not that of two no-ops."""
    voc = voc_sample_root / "VOC2012"
    name = (voc / "ImageSets/Segmentation/val.txt").read_text().split()[0]
    image = np.array(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
    images = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    g = torch.Generator().manual_seed(0)
    coarse = 3 * torch.randn(1, 21, image.shape[0] // 8, image.shape[1] // 8, generator=g)
    logits = F.interpolate(coarse, size=image.shape[:2], mode="bilinear", align_corners=False)
    crf = DenseCRF(backend="torch")
    for iterations in (5, 10):
        scalar = CRFRNN.from_dense_crf(crf, 21, iterations)
        matrix = CRFRNN.from_dense_crf(crf, 21, iterations, kernel_weights="matrix")
        assert matrix.pos_w.shape == matrix.bi_w.shape == (21, 21)
        with torch.no_grad():
            want, got = scalar(logits, images), matrix(logits, images)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
        assert torch.equal(got.argmax(1), want.argmax(1))
        assert (want.argmax(1) != logits.argmax(1)).float().mean() > 0.01


def test_batch_equals_per_image():
    logits, images = random_case(batch=3, classes=4, size=(20, 24), seed=1)
    layer = CRFRNN(4, iterations=3, bi_xy_std=6, bi_rgb_std=20)
    whole = layer(logits, images)
    grads = torch.autograd.grad(whole.square().sum(), list(layer.parameters()))
    singles = [layer(logits[i : i + 1], images[i : i + 1]) for i in range(3)]
    torch.testing.assert_close(whole, torch.cat(singles), rtol=1e-5, atol=1e-5)
    single_grads = torch.autograd.grad(
        sum(s.square().sum() for s in singles), list(layer.parameters())
    )
    for a, b in zip(grads, single_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert (whole.argmax(1) != logits.argmax(1)).any()  # the CRF did something


def voc_logits(root: Path, count: int):
    """(image uint8 (H, W, 3), logits (21, H, W)) for the first val images: coarse, noisy scores
    from the truth (one-hot, 8x pooled, noised, bilinearly upsampled), as a network gives."""
    voc = root / "VOC2012"
    out = []
    for i, name in enumerate((voc / "ImageSets/Segmentation/val.txt").read_text().split()[:count]):
        image = np.array(Image.open(voc / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        mask = torch.from_numpy(np.array(Image.open(voc / "SegmentationClass" / f"{name}.png")))
        one_hot = F.one_hot(torch.where(mask == 255, 0, mask).long(), 21)
        low = 4 * F.avg_pool2d(one_hot.permute(2, 0, 1).float()[None], 8, ceil_mode=True)
        low = low + torch.randn(low.shape, generator=torch.Generator().manual_seed(i))
        logits = F.interpolate(low, size=mask.shape, mode="bilinear", align_corners=False)[0]
        out.append((image, logits))
    return out


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_untrained_layer_equals_the_post_hoc_crf_on_voc(voc_sample_root, normalization):
    """Potts and the configured weights: the same CRF as DenseCRF(backend="torch") on raw
    scores, the released setting otherwise (10 iterations, as CRF-RNN runs at test time)."""
    post_hoc = DenseCRF(backend="torch", normalization=normalization)
    layer = CRFRNN.from_dense_crf(post_hoc, 21)
    assert (layer.iterations, layer.normalization, layer.bi_xy_std) == (10, normalization, 49)
    agree, changed = [], []
    for image, logits in voc_logits(voc_sample_root, 3):
        want = post_hoc(image, logits, kind="logits")
        with torch.no_grad():
            scores = layer(logits[None], torch.from_numpy(image).permute(2, 0, 1)[None].float())
        labels = scores[0].argmax(0)
        agree.append((labels == want.argmax(0)).float().mean().item())
        changed.append((labels != logits.argmax(0)).float().mean().item())
        assert (scores[0].softmax(0) - want).abs().max() < 1e-4  # the same marginals
    assert min(agree) >= 0.999, agree
    assert min(changed) > 0.001, changed  # not equal merely because neither moved a label


def test_bf16_autocast_runs_in_float32():
    logits, images = random_case(classes=5, size=(16, 18), seed=2)
    layer = CRFRNN(5, iterations=3, bi_xy_std=6, bi_rgb_std=20)
    low = logits.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = layer(low, images.bfloat16())
    assert scores.dtype == torch.float32
    scores.logsumexp(1).sum().backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    want = layer(low.detach().float(), images.bfloat16().float())
    torch.testing.assert_close(scores, want)


def test_a_parameter_update_changes_the_output():
    logits, images = random_case(classes=4, size=(16, 18), seed=3)
    target = torch.randint(0, 4, (2, 16, 18), generator=torch.Generator().manual_seed(3))
    layer = CRFRNN(4, iterations=3, bi_xy_std=6, bi_rgb_std=20)
    before = {name: p.detach().clone() for name, p in layer.named_parameters()}
    out = layer(logits, images)
    loss = F.cross_entropy(out, target)
    loss.backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()
    for name, p in layer.named_parameters():
        assert not torch.equal(p, before[name]), name
    with torch.no_grad():
        new = layer(logits, images)
    assert (new - out).abs().max() > 1e-3
    assert F.cross_entropy(new, target) < loss  # a gradient step down


def test_autograd_keeps_per_iteration_pixel_tensors_not_lattices():
    """Memory grows with iterations x C x H x W: autograd keeps two (P, C) maps per iteration
    (the softmax output, which the filtering's backward shares, and the messages for the
    compatibility's gradient), nothing lattice-sized (the lattices are kept once, outside)."""
    logits, images = random_case(batch=1, classes=21, size=(40, 50), seed=4)
    pixels_by_labels = logits.numel()

    def saved(iterations):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.numel()
            return t

        layer = CRFRNN(21, iterations=iterations, bi_xy_std=10, bi_rgb_std=10)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(logits.requires_grad_(), images)
        return storages.values()

    two, six = saved(2), saved(6)
    assert max([*two, *six]) <= pixels_by_labels
    per_iteration = (sum(six) - sum(two)) / 4
    assert 2 * pixels_by_labels <= per_iteration <= 2 * pixels_by_labels + 1000


def test_zero_iterations_return_the_scores_and_bad_inputs_raise():
    logits, images = random_case()
    torch.testing.assert_close(CRFRNN(3, iterations=0)(logits, images), logits)
    layer = CRFRNN(3)
    with pytest.raises(ValueError, match=r"logits must be \(B, 3, H, W\)"):
        layer(logits[:, :2], images)
    with pytest.raises(ValueError, match="upsample the scores"):
        layer(logits, images[..., :5])
    with pytest.raises(ValueError, match="normalization"):
        CRFRNN(3, normalization="before")
    with pytest.raises(ValueError, match="bi_rgb_std"):
        CRFRNN(3, bi_rgb_std=0)
    with pytest.raises(ValueError, match="kernel_weights"):
        CRFRNN(3, kernel_weights="vector")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    logits, images = random_case(classes=4, size=(30, 40), seed=5)
    layer = CRFRNN(4, iterations=3, bi_xy_std=6, bi_rgb_std=20)
    cpu = layer(logits, images)
    cpu_grads = torch.autograd.grad(cpu.square().sum(), list(layer.parameters()))
    gpu = layer.cuda()(logits.cuda(), images.cuda())
    gpu_grads = torch.autograd.grad(gpu.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
    for a, b in zip(gpu_grads, cpu_grads, strict=True):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3)


def test_output_scale_calibrates_without_changing_the_labels():
    """`output_scale=True`: a learnt positive factor on the returned scores, 1 at the start (the
    same scores as without it); moved, the scores scale and their argmax stays; its gradient is
    exact (float64 gradcheck with every parameter)."""
    logits, images = random_case(dtype=torch.float64, seed=4)
    plain = CRFRNN(3, iterations=2, bi_xy_std=4, bi_rgb_std=40).double()
    scaled = CRFRNN(3, iterations=2, bi_xy_std=4, bi_rgb_std=40, output_scale=True).double()
    assert set(dict(scaled.named_parameters())) == {*LEARNABLE, "log_output_scale"}
    with torch.no_grad():
        base = plain(logits, images)
        torch.testing.assert_close(scaled(logits, images), base)
        scaled.log_output_scale.fill_(np.log(2.5))
        moved = scaled(logits, images)
    torch.testing.assert_close(moved, 2.5 * base)
    assert torch.equal(moved.argmax(1), base.argmax(1))
    params = {n: p.detach().clone().requires_grad_() for n, p in scaled.named_parameters()}

    def run(scores, *values):
        return functional_call(scaled, dict(zip(params, values, strict=True)), (scores, images))

    assert torch.autograd.gradcheck(
        run, (logits.requires_grad_(), *params.values()), atol=1e-6, rtol=1e-5
    )


def test_a_potts_layer_learns_only_the_kernel_weights():
    """`learn_compatibility=False`: the compatibility stays Potts through an optimizer step, and
    it stays in the state dict under its key, so checkpoints load either way."""
    logits, images = random_case(classes=4, size=(12, 14), seed=5)
    target = torch.randint(0, 4, (2, 12, 14), generator=torch.Generator().manual_seed(5))
    layer = CRFRNN(4, iterations=2, bi_xy_std=6, bi_rgb_std=20, learn_compatibility=False)
    assert [name for name, _ in layer.named_parameters()] == ["pos_w", "bi_w"]
    F.cross_entropy(layer(logits, images), target).backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()
    assert layer.pos_w.item() != 3.0 and layer.bi_w.item() != 4.0
    torch.testing.assert_close(layer.compatibility, 1.0 - torch.eye(4), rtol=0, atol=0)
    learnt = CRFRNN(4, iterations=2, bi_xy_std=6, bi_rgb_std=20)
    learnt.load_state_dict(layer.state_dict())
    assert set(layer.state_dict()) == set(learnt.state_dict())
