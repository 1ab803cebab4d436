"""DDP on CPU (gloo, 2 processes): a run ends with one metrics.json and the weights of a 1-process
run on the same global batch; inside a Hydra multirun the ranks share each job's folder.

What makes the two runs equal:
- the same 2 training images (`data.limit_train=2`) form every global batch, whole (crop = image
  size, no scaling or flip), so the batch composition cannot differ whichever rank draws which;
- DDP averages the ranks' gradients of their per-image mean losses; the 1-process twin computes
  exactly that with batch 1 x 2 accumulated steps (one batch of 2 would weight images by their
  count of non-ignored pixels instead: about 1.5% off on the synthetic set);
- no randomness left in the step: dropout 0 (ranks reseed per rank), VGG has no BatchNorm.
"""

import os
import socket
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from deeplab.tables.runs import load_jobs

EXACT = [
    "data=synthetic",
    "debug=smoke",
    "logger=csv",
    "data.limit_train=2",
    "data.limit_val=1",
    "data.crop_size=128",
    "data.random_scale=none",
    "data.flip=false",
    "model.dropout=0",
    "trainer.max_steps=3",
    "val_samples=0",
]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def train(*args: str) -> None:
    run = subprocess.run(
        [sys.executable, "src/train.py", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def weights(run_dir) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The 1-process twin: batch 1 x 2 accumulated steps, the same global batch of 2 images."""
    run_dir = tmp_path_factory.mktemp("ddp") / "single"
    train(
        *EXACT,
        "trainer=cpu",
        "data.batch_size=1",
        "trainer.accumulate_grad_batches=2",
        f"hydra.run.dir={run_dir}",
    )
    return weights(run_dir)


def assert_same(ddp: dict, single: dict) -> None:
    assert ddp.keys() == single.keys()
    moved = max((ddp[k] - single[k]).abs().max().item() for k in ddp)
    assert moved < 1e-5, f"DDP and 1-process weights differ by up to {moved}"


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, single):
    train(*EXACT, *DDP, "data.batch_size=1", f"hydra.run.dir={tmp_path / 'ddp'}")
    assert [p.parent.name for p in tmp_path.rglob("metrics.json")] == ["ddp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp"]  # no stray run dirs
    assert_same(weights(tmp_path / "ddp"), single)


@pytest.mark.slow
def test_two_nodes_match_one_process_on_the_same_global_batch(tmp_path, single):
    """2 nodes x 1 process on 127.0.0.1, each started by hand as on a cluster (docs/training.md,
    Multi-node): the same command and run folder, NODE_RANK and the master's address."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [*EXACT, *DDP, "trainer.devices=1", "trainer.num_nodes=2", "data.batch_size=1"]
    nodes = [
        subprocess.Popen(
            [sys.executable, "src/train.py", *args, f"hydra.run.dir={tmp_path / 'run'}"],
            cwd=REPO,
            env={
                **os.environ,
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "NODE_RANK": str(rank),
                "LOCAL_RANK": "0",  # this node's processes are started here, not by Lightning
                "WORLD_SIZE": "2",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=600)[0].decode()[-3000:] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    run = tmp_path / "run"
    assert "mIoU" in (run / "train.log").read_text()  # rank 0's log and results
    assert (run / "train_node1.log").is_file()
    assert_same(weights(run), single)


@pytest.mark.slow
def test_ddp_inside_a_multirun_keeps_one_folder_per_job(tmp_path):
    # ${now:...%f} differs in every process: a rank that re-ran the sweep would make a 2nd folder.
    sweep = tmp_path / "sweeps" / "${now:%H-%M-%S-%f}"
    train(
        "-m",
        "experiment=table2",
        "table2_row=step_b30_6k,poly_b10_20k",
        "~data.aug",
        *EXACT,
        "trainer.max_steps=2",
        *DDP,
        "data.batch_size=1",
        f"hydra.sweep.dir={sweep}",
    )
    (sweep,) = (tmp_path / "sweeps").iterdir()
    jobs = load_jobs(sweep)
    assert [job.choices["table2_row"] for job in jobs] == ["step_b30_6k", "poly_b10_20k"]
    assert all(job.metrics is not None for job in jobs)
    assert len(list(sweep.rglob("metrics.json"))) == 2
    assert all((job.path / "train_ddp_process_1.log").is_file() for job in jobs)  # rank 1 was here
