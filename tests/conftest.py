"""Shared test fixtures: repo paths, configs and the real VOC sample beside the checkout."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_VOC = REPO.parent / "shared" / "data" / "voc_sample"


@pytest.fixture
def voc_sample_root() -> Path:
    """The real PASCAL VOC sample (a VOCdevkit-like folder); skips when ../shared is absent."""
    if not (SHARED_VOC / "VOC2012").is_dir():
        pytest.skip("../shared/data/voc_sample is absent (only CI and developers have it)")
    return SHARED_VOC
