"""Shared test fixtures: repo paths, configs and the real VOC sample beside the checkout."""

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_VOC = REPO.parent / "shared" / "data" / "voc_sample"


@pytest.fixture
def voc_sample_root() -> Path:
    """The real PASCAL VOC sample (a VOCdevkit-like folder); skips when ../shared is absent."""
    if not (SHARED_VOC / "VOC2012").is_dir():
        pytest.skip("../shared/data/voc_sample is absent (only CI and developers have it)")
    return SHARED_VOC


@pytest.fixture
def one_thread():
    """The CRF lattice's and the reference Caffe's many small tensor ops crawl when OpenMP threads
    fight over busy cores: one thread for the tests that use it (`pytestmark`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
