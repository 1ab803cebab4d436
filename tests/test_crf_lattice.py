"""The torch lattice's fast paths against the plain computations they replace, and against
pydensecrf where a setting takes the other path."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from deeplab.crf import DenseCRF, meanfield
from deeplab.crf.fast_ops import flat_nonzero, search_sorted, transposed
from deeplab.crf.meanfield import Filters, Kernel, bilateral_features
from deeplab.crf.permutohedral import Lattice

pytestmark = pytest.mark.usefixtures("one_thread")


def small_case(seed: int = 0, size=(37, 45), classes: int = 5):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
    image[: size[0] // 2] //= 8  # a dark half: some lattice points, and their neighbours, absent
    probs = rng.dirichlet(np.full(classes, 0.5), size).transpose(2, 0, 1).astype(np.float32)
    return image, probs


def test_search_sorted_equals_torch_searchsorted():
    g = torch.Generator().manual_seed(0)
    keys = torch.unique(torch.randint(0, 10_000, (3_000,), generator=g, dtype=torch.int32))
    queries = torch.randint(-5, 10_005, (5_000,), generator=g, dtype=torch.int32)
    queries = torch.cat([queries.sort().values, queries])  # an ascending run, then any order
    got = search_sorted(keys, queries)
    assert got.dtype == torch.int64
    assert torch.equal(got, torch.searchsorted(keys, queries))


def test_flat_nonzero_and_transposed_equal_torch():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(1_000, generator=g) < 0.3
    assert torch.equal(flat_nonzero(mask), torch.nonzero(mask)[:, 0])
    assert not bool(flat_nonzero(torch.zeros(5, dtype=torch.bool)).numel())
    x = torch.randn(7, 1_000, generator=g)
    got = transposed(x)
    assert got.is_contiguous()
    assert torch.equal(got, x.T)
    y = torch.randn(1_000, 7, generator=g).T  # its transpose is contiguous: still a copy
    before = y.clone()
    got = transposed(y)
    assert torch.equal(got, y.T)
    got += 1
    assert torch.equal(y, before)


@pytest.mark.parametrize("kind", ["probs", "logits"])
def test_mean_field_leaves_the_callers_scores_as_they_were(kind):
    """The unary is worked on in place in a copy: not in the caller's array, whatever its
    memory layout (here one whose (C, H*W) transpose is contiguous, channels last)."""
    image, probs = small_case(classes=4)
    scores = torch.from_numpy(np.ascontiguousarray(probs.transpose(1, 2, 0))).permute(2, 0, 1)
    if kind == "logits":
        scores = scores.log()
    before = scores.clone()
    crf = DenseCRF(backend="torch", iterations=2)
    crf(torch.from_numpy(image), scores, kind=kind)
    assert torch.equal(scores, before)


@pytest.mark.parametrize("reverse", [False, True])
def test_two_axis_blur_steps_equal_the_lattice_blur_axis_by_axis(reverse):
    """`Filters` blurs two axes per step, over both kernels' stacked rows; `Lattice.blur` one
    axis at a time in place (densecrf's order; reverse: the transposed filter's)."""
    image, _ = small_case()
    lattices = [
        Lattice.build([bilateral_features(torch.from_numpy(image), 5.0, 3.0)[:, :2]]),
        Lattice.build([bilateral_features(torch.from_numpy(image), 9.0, 4.0)]),
    ]
    filters = Filters.build([Kernel(lat, 1.0, None, None) for lat in lattices], reverse)
    g = torch.Generator().manual_seed(1)
    values = [torch.rand(lat.size, 3, generator=g) for lat in lattices]
    for v in values:
        v[0] = 0  # the empty row
    got = torch.cat(values)
    for step in filters.blur:
        got = step(got)
    first = 0
    for lattice, v in zip(lattices, values, strict=True):
        want = v.clone()
        axes = lattice.neighbors.flip(0) if reverse else lattice.neighbors
        for pairs in axes:
            want.add_(torch.nn.functional.embedding_bag(pairs, want, mode="sum"), alpha=0.5)
        torch.testing.assert_close(got[first : first + lattice.size], want, rtol=1e-6, atol=1e-6)
        first += lattice.size
    assert len(filters.blur) == 3  # 6 axes of the 5-d kernel, two per step


def test_weights_beyond_exp_range_take_the_softmax_and_match_pydensecrf():
    """Messages over ~88 overflow exp in float32: those rows are redone as a softmax."""
    pytest.importorskip("pydensecrf")
    image, probs = small_case(2)
    kw = dict(pos_w=60.0, bi_w=60.0, normalization="per_pixel", iterations=3)
    ref = DenseCRF(backend="pydensecrf", **kw)(image, probs)
    port = DenseCRF(backend="torch", **kw)(image, probs)
    assert np.isfinite(port).all()
    assert np.abs(ref - port).max() < 1e-4


@pytest.mark.parametrize("weights", [{}, {"pos_w": 60.0, "bi_w": 60.0}])
def test_mean_field_steps_by_chunks_give_the_one_chunk_result(monkeypatch, weights):
    """On the CPU a mean-field step over an array above glibc's largest mmap threshold runs
    `CHUNK` rows at a time into kept buffers: the same result as one chunk to float rounding
    (the vectorised softmax passes round the rows at a chunk's edge apart), also where weights
    beyond exp's range redo chunks as a softmax. Smaller arrays take one chunk."""
    image, probs = small_case(3)
    crf = DenseCRF(backend="torch", normalization="per_pixel", iterations=3, **weights)
    whole = crf(image, probs)
    assert not meanfield._page_faults(2**18, 21, torch.zeros(1))  # 21 MiB: one chunk
    assert meanfield._page_faults(2**18, 21, torch.zeros(1, dtype=torch.float64))  # 42 MiB
    monkeypatch.setattr(meanfield, "MMAP_THRESHOLD_MAX", 0)  # every array "large"...
    monkeypatch.setattr(meanfield, "CHUNK", 97)  # ... in ~17 point chunks, several lattice ones
    chunked = crf(image, probs)
    assert np.isfinite(chunked).all()
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-5)


@pytest.mark.parametrize("caller", [None, "0"])
def test_importing_the_package_asks_torch_for_huge_pages_unless_the_caller_said(caller):
    """`import deeplab` sets THP_MEM_ALLOC_ENABLE=1 for torch's CPU allocator, before anything
    allocates; a value the caller exported wins (docs/crf.md, Speed)."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if caller is not None:
        env["THP_MEM_ALLOC_ENABLE"] = caller
    code = "import os, deeplab; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == (caller or "1")


@pytest.mark.parametrize("rgb_std", [60.0, 1.0])  # keys packed in int32 / needing int64
def test_lattices_built_per_image_and_stacked_equal_one_lattice_of_the_batch(rgb_std):
    """`Lattice.build` numbers several images with shared keys, or (int64 keys) each alone and
    stacks them: either way the same lattice as the shared keys give."""
    from deeplab.crf.permutohedral import _KeyLayout, _Simplices

    features = [
        bilateral_features(torch.from_numpy(small_case(seed, size)[0]), 20.0, rgb_std)
        for seed, size in ((0, (37, 45)), (1, (20, 31)), (2, (37, 45)))
    ]
    simplices = [_Simplices.of(f) for f in features]
    assert (_KeyLayout.of(simplices).dtype == torch.int64) == (rgb_std < 10)
    shared = Lattice._from_simplices(simplices)
    for got in (Lattice.build(features), Lattice.stack([Lattice.build([f]) for f in features])):
        for field in ("vertices", "weights", "neighbors", "splat_counts", "splat_col"):
            assert torch.equal(getattr(got, field), getattr(shared, field)), field
        assert torch.equal(got.splat_value, shared.splat_value)
        assert got.alpha == shared.alpha
