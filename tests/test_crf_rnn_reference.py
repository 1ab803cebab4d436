"""CRF-RNN against the authors' own PyTorch layer (sadeepj/crfasrnn_pytorch), built unmodified.

Runs only where a checkout of that repository is named by CRFASRNN_PYTORCH_DIR and a C++
compiler builds its permutohedral extension; it skips otherwise (docs/crf-rnn.md, "Checked
against the authors' layer"):

    git clone https://github.com/sadeepj/crfasrnn_pytorch /tmp/crfasrnn_pytorch
    CRFASRNN_PYTORCH_DIR=/tmp/crfasrnn_pytorch python -m pytest tests/test_crf_rnn_reference.py

The authors' layer computes logits + M (W_s m_s + W_b m_b) with M = I at the start; ours
computes logits - mu (W_s m_s + W_b m_b), so their M is our -mu and the scores are equal, not
only the labels. Their filters divide by K 1 after filtering: `normalization="per_pixel"`.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_crf_rnn import voc_logits

from deeplab.crf import CRFRNN

pytestmark = pytest.mark.usefixtures("one_thread")

SETTING = {"pos_w": 3.0, "pos_xy_std": 3.0, "bi_w": 4.0, "bi_xy_std": 49.0, "bi_rgb_std": 5.0}


@pytest.fixture(scope="module")
def reference_layer(tmp_path_factory):
    """The authors' `CrfRnn` class, its C++ extension built from their sources into tmp."""
    source = os.environ.get("CRFASRNN_PYTORCH_DIR")
    if not source:
        pytest.skip("CRFASRNN_PYTORCH_DIR is not set (a checkout of sadeepj/crfasrnn_pytorch)")
    package = Path(source) / "crfasrnn"
    if not (package / "crfrnn.py").is_file():
        pytest.skip(f"CRFASRNN_PYTORCH_DIR={source} holds no crfasrnn/crfrnn.py")
    if shutil.which("c++") is None:
        pytest.skip("no C++ compiler to build the reference's permuto_cpp extension")
    build = tmp_path_factory.mktemp("permuto_cpp")
    built = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-lib", build, "--build-temp", build],
        cwd=package,
        capture_output=True,
        text=True,
    )
    library = sorted(build.glob("permuto_cpp*.so"))
    if built.returncode or not library:
        pytest.skip(f"the reference's extension did not build: {built.stderr[-500:]}")
    spec = importlib.util.spec_from_file_location("permuto_cpp", library[0])
    extension = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(extension)
    saved_path, saved_modules = list(sys.path), dict(sys.modules)
    sys.modules["permuto_cpp"] = extension
    sys.path.insert(0, source)
    try:
        from crfasrnn.crfrnn import CrfRnn
        from crfasrnn.params import DenseCRFParams

        yield CrfRnn, DenseCRFParams
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - set(saved_modules):
            del sys.modules[name]


@pytest.mark.slow
def test_matrix_layer_equals_the_authors_layer_on_voc(voc_sample_root, reference_layer):
    """Trained-looking parameters (all three matrices off their start), real VOC images and
    noisy scores: the same scores to float32 rounding, the same labels, and the same gradient
    with respect to the scores."""
    crf_rnn, params = reference_layer
    ours = CRFRNN(21, iterations=5, kernel_weights="matrix", **SETTING)
    theirs = crf_rnn(
        21,
        num_iterations=5,
        crf_init_params=params(
            alpha=SETTING["bi_xy_std"],
            beta=SETTING["bi_rgb_std"],
            gamma=SETTING["pos_xy_std"],
            spatial_ker_weight=SETTING["pos_w"],
            bilateral_ker_weight=SETTING["bi_w"],
        ),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
        theirs.spatial_ker_weights.copy_(ours.pos_w)
        theirs.bilateral_ker_weights.copy_(ours.bi_w)
        theirs.compatibility_matrix.copy_(-ours.compatibility)
    for image, logits in voc_logits(voc_sample_root, 2):
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        target = logits.argmax(0)[None]
        runs = []
        for layer in (ours, theirs):
            scores_in = logits[None].clone().requires_grad_()
            scores = layer(scores_in, rgb) if layer is ours else layer(rgb, scores_in)
            F.cross_entropy(scores, target).backward()
            runs.append((scores.detach(), scores_in.grad))
        (mine, my_grad), (want, want_grad) = runs
        assert (mine - want).abs().max() < 1e-4
        assert torch.equal(mine.argmax(1), want.argmax(1))
        assert F.cosine_similarity(my_grad.flatten(), want_grad.flatten(), 0) > 0.9999
