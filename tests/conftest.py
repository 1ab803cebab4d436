"""Shared test fixtures: repo paths, configs and the real VOC sample beside the checkout."""

import contextlib
import os
import resource
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_VOC = REPO.parent / "shared" / "data" / "voc_sample"


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A real write fault, as on a full disk: no file this process writes may grow past `nbytes`
    (RLIMIT_FSIZE: EFBIG instead of ENOSPC, without root or a mount). The limit holds for the whole
    process, pytest's own report included, so use it inside a test's body, never as a fixture:
    pytest writes the test's result to its output (a file when redirected) before a fixture's
    teardown would lift it, and that write fails too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, xfsz)


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


# Variables a caller's shell may hold that change what the code under test does: tracebacks instead
# of one-line errors (HYDRA_FULL_ERROR), another data folder, wandb mode, a SLURM job or DDP rank
# (the run lock and Lightning read them). Subprocesses inherit os.environ, so clearing it here
# covers them too.
CALLER_PREFIXES = ("HYDRA_", "DEEPLAB_", "WANDB_", "SLURM_", "SUBMITIT_")
CALLER_NAMES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT")  # fmt: skip


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """Where data sets are built during the tests (the synthetic set once per worker): never the
    checkout's data/, which the default `data_dir` would be for runs started in the checkout."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch, data_dir):
    """Run every test as on a fresh shell, whatever the caller exported; data sets go to a
    temporary folder, so the checkout stays as it was."""
    for name in list(os.environ):
        if name.startswith(CALLER_PREFIXES) or name in CALLER_NAMES:
            monkeypatch.delenv(name)
    monkeypatch.setenv("DEEPLAB_DATA_DIR", str(data_dir))
