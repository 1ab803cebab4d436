"""Faults of jobs on clusters and of run folders (docs/faults.md, Faults and run directories).

- two runs started together get their own folders, and a run refuses a folder a live run owns;
- a run's `<job>.log` holds what it printed: a failed run's error, a finished run's table;
- SIGTERM (a scheduler's time limit or preemption) saves a resumable last.ckpt, exits 143, and
  the same command run again (ckpt_path=auto) ends with the weights of an uninterrupted run.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl
import torch
from conftest import REPO

from deeplab.engine.pipeline import evaluate, train
from deeplab.runtime import run_lock
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError

# 8 train images, batch 2: four steps per epoch, two epochs, a last.ckpt after each.
SMOKE = [
    "debug=smoke",
    "data=synthetic",
    "data.num_train=8",
    "data.num_val=2",
    "logger=csv",
    "val_samples=0",
    "trainer.max_steps=8",
]


def command(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "src" / "train.py"), *args]


def sleeper() -> subprocess.Popen:
    """A live process of this host, to own a folder."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def own(run_dir, pid: int, **extra) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": socket.gethostname(), "slurm_job": None, **extra}
    (run_dir / run_lock.OWNER_FILE).write_text(json.dumps(owner))


def test_a_folder_owned_by_a_live_run_is_refused_and_a_stale_one_taken(tmp_path, monkeypatch):
    live = sleeper()
    try:
        own(tmp_path / "live", live.pid)
        with pytest.raises(UserError, match=f"{tmp_path / 'live'} is in use by a live run"):
            run_lock.acquire(tmp_path / "live")
    finally:
        live.kill()
        live.wait()
    path = run_lock.acquire(tmp_path / "live")  # its owner is gone now: stale
    assert json.loads(path.read_text())["pid"] == os.getpid()
    run_lock.release(path)
    assert not path.exists()

    # an earlier attempt of this SLURM job on another node: requeued, so over
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    own(tmp_path / "requeued", 1, host="another-node", slurm_job="4242")
    run_lock.release(run_lock.acquire(tmp_path / "requeued"))
    own(tmp_path / "other", 1, host="another-node", slurm_job="17")
    with pytest.raises(UserError, match="if it is not running, delete"):
        run_lock.acquire(tmp_path / "other")


@pytest.mark.slow
def test_runs_started_together_get_their_own_folders_and_logs(tmp_path):
    """Three train.py started at once: two with the default run folder (relative to the working
    directory), one pointed at a folder a live process owns. The data root is missing, so each
    fails fast, after Hydra made its folder; each log must hold its error."""
    owned = tmp_path / "owned"
    live = sleeper()
    own(owned, live.pid)
    missing = ["data=voc", f"data_dir={tmp_path / 'nowhere'}", "logger=csv"]
    try:
        runs = [
            subprocess.Popen(command(*missing, *extra), cwd=tmp_path, stderr=subprocess.PIPE)
            for extra in ([], [], [f"hydra.run.dir={owned}"])
        ]
        errors = [run.communicate(timeout=300)[1].decode() for run in runs]
    finally:
        live.kill()
        live.wait()
    assert [run.returncode for run in runs] == [2, 2, 2], errors  # user errors: no data, owned
    assert f"{owned} is in use by a live run" in errors[2]
    assert sorted(p.name for p in owned.iterdir()) == [run_lock.OWNER_FILE]  # nothing written

    folders = sorted((tmp_path / "outputs").glob("*/*"))
    assert len(folders) == 2, folders
    for folder in folders:
        log = (folder / "train.log").read_text()
        assert "Error: data.root=" in log and "does not exist" in log, log
        assert not (folder / run_lock.OWNER_FILE).exists()  # released at exit


def final_weights(run_dir) -> tuple[dict, int]:
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return state["state_dict"], state["global_step"]


def assert_same_weights(run_dir, reference) -> None:
    (full, full_step), (resumed, resumed_step) = final_weights(reference), final_weights(run_dir)
    assert full_step == resumed_step == 8
    for key in full:
        assert torch.equal(full[key], resumed[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The uninterrupted run (in-process), and the data_dir override it built the data set in."""
    tmp = tmp_path_factory.mktemp("faults")
    data = f"data_dir={tmp / 'data'}"
    train(compose("train", [*SMOKE, data]), tmp / "full")
    return tmp / "full", data


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_the_rerun_resumes_exactly(
    tmp_path, uninterrupted
):
    reference, data = uninterrupted
    run_dir = tmp_path / "run"
    args = command(*SMOKE, data, f"hydra.run.dir={run_dir}")
    run = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    first_epoch = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGTERM)  # at the end of the 1st epoch or during the 2nd
    output = run.communicate(timeout=300)[0].decode()
    assert run.returncode == 143, output
    step = final_weights(run_dir)[1]
    assert 4 <= step < 8, f"the run stopped at step {step}, not mid-run"
    assert "Stopped by SIGTERM" in (run_dir / "train.log").read_text()

    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    log = (run_dir / "train.log").read_text()  # both attempts, appended
    assert "Stopped by SIGTERM" in log and "Restoring states from the checkpoint" in log
    assert "mIoU" in log  # the results table
    assert_same_weights(run_dir, reference)


class Signal(pl.Callback):
    """Send this process a signal after a given step, as a scheduler would."""

    def __init__(self, step: int, signum: int = signal.SIGTERM):
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.slow
def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path, uninterrupted):
    reference, data = uninterrupted
    cfg = compose("train", [*SMOKE, data])
    with pytest.raises(SystemExit) as stopped:
        train(cfg, tmp_path, callbacks=[Signal(step=6)])  # the 2nd of 4 steps of epoch 2
    assert stopped.value.code == 143
    assert final_weights(tmp_path)[1] == 6
    train(cfg, tmp_path)  # ckpt_path=auto
    assert_same_weights(tmp_path, reference)


@pytest.mark.slow
def test_a_launchers_requeue_handler_runs_after_the_checkpoint(tmp_path, uninterrupted):
    """submitit handles SIGUSR2 by requeueing the job and exiting on the spot. Its handler needs
    a SLURM cluster; this one does the same steps where it can: note, then exit."""
    steps_saved = []

    def requeue_and_exit(signum, frame):
        steps_saved.append(final_weights(tmp_path)[1])
        sys.exit(-1)

    cfg = compose("train", [*SMOKE, uninterrupted[1]])
    previous = signal.signal(signal.SIGUSR2, requeue_and_exit)
    try:
        with pytest.raises(SystemExit) as stopped:
            train(cfg, tmp_path, callbacks=[Signal(step=5, signum=signal.SIGUSR2)])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.code == -1 and steps_saved == [5]


class SigtermInValidation(pl.Callback):
    def on_validation_batch_end(self, *args) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_an_evaluation_stopped_by_sigterm_exits_143_without_metrics(tmp_path, uninterrupted):
    """Lightning ends a stopped validation with status 0: a scheduler would count it as done."""
    reference, data = uninterrupted
    ckpt = f"ckpt_path={reference / 'checkpoints' / 'last.ckpt'}"
    data_set = ["debug=smoke", "data=synthetic", "data.num_train=8", "data.num_val=2"]
    cfg = compose("evaluate", [*data_set, data, ckpt])
    with pytest.raises(SystemExit) as stopped:
        evaluate(cfg, tmp_path, callbacks=[SigtermInValidation()])
    assert stopped.value.code == 143
    assert not (tmp_path / "metrics.json").exists()
