"""Jobs that a scheduler stops and starts again (SLURM time limit, preemption, requeue).

SIGTERM: Lightning's signal connector turns it into `SIGTERMException` at the next batch
boundary (every rank at the same step under DDP), a `SystemExit` with no code, so a stopped run
used to exit 0. `SaveOnSigterm` writes a resumable `last.ckpt` at that step and
`exit_on_sigterm` exits with 143 (128 + SIGTERM, what a shell reports for a process the signal
killed), so schedulers and Hydra count the run as stopped, not done. Ctrl-C (SIGINT) in a fit or
validation is Lightning's: exit status 1.

submitit (`hydra/launcher=slurm`) announces a time limit or preemption with SIGUSR2 (its
`SUBMITIT_PREEMPT_SIGNAL`), and its handler requeues the job and exits on the spot, mid-step and
without a checkpoint. While fitting, `exit_on_sigterm` holds such a handler back: the signal stops
the fit between two batches as SIGTERM does, last.ckpt is written, then the held handler runs.

`ckpt_path=auto` (train.yaml's default) resumes from `<run dir>/checkpoints/last.ckpt` when it
exists: a requeued job, or the same command run again with `hydra.run.dir=<its folder>`.
"""

import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn, TrainerStatus
from pytorch_lightning.utilities.exceptions import SIGTERMException

EXIT_SIGTERM = 143
EXIT_SIGINT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's choice of requeue signal (USR2)


def resume_from(ckpt_path: str | None, last: Path) -> str | None:
    """The checkpoint `trainer.fit` resumes from: `auto` is `last` when it exists."""
    if ckpt_path != "auto":
        return ckpt_path
    return str(last) if last.is_file() else None


class SaveOnSigterm(pl.Callback):
    """Save a resumable checkpoint when a fit stops on SIGTERM (between two batches)."""

    def __init__(self, path: Path):
        self.path = path

    def on_exception(self, trainer: pl.Trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return
        progress = trainer.fit_loop.epoch_progress
        if progress.current.started == progress.current.processed == progress.current.completed:
            # Stopped by the fit loop after an epoch closed: Lightning resumes such a state one
            # epoch ahead (new reseeding, other order). Save it as the epoch-end state Lightning
            # restores exactly, the one `on_train_epoch_end` checkpoints have.
            progress.total.completed -= 1
            progress.current.completed -= 1
            try:
                trainer.save_checkpoint(self.path, weights_only=False)
            finally:
                progress.total.completed += 1
                progress.current.completed += 1
            return
        trainer.save_checkpoint(self.path, weights_only=False)


@contextmanager
def exit_143_on_sigterm(what: str):
    """For runs with nothing to resume (evaluation): Lightning's SIGTERMException would end them
    with status 0 and no metrics.json, so a scheduler would count the job as done."""
    try:
        yield
    except SIGTERMException:
        print(f"Stopped by SIGTERM: {what} did not finish; run the same command again.",
              file=sys.stderr, flush=True)  # fmt: skip
        raise SystemExit(EXIT_SIGTERM) from None


@contextmanager
def exit_on_sigterm(trainer: pl.Trainer, stop: SaveOnSigterm):
    """Turn Lightning's SIGTERMException into exit status 143 with a message on how to resume,
    and hold back a launcher's requeue handler (submitit's) until the checkpoint is written."""
    requeue = signal.Signals["SIG" + os.environ.get(PREEMPT_SIGNAL_ENV, "USR2")]
    launcher = signal.getsignal(requeue)
    held: list[tuple] = []

    def hold(signum: int, frame: Any) -> None:
        if trainer.state.status != TrainerStatus.RUNNING:
            launcher(signum, frame)  # no fit or validation to stop: requeue now
            return
        held.append((signum, frame))
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning stops between two batches

    holding = callable(launcher) and threading.current_thread() is threading.main_thread()
    if holding:
        signal.signal(requeue, hold)
    try:
        yield
    except SIGTERMException:
        if trainer.is_global_zero:
            print(
                f"Stopped by SIGTERM at step {trainer.global_step}; the checkpoint to resume from "
                f"is {stop.path}. Run the same command with hydra.run.dir={stop.path.parents[1]} "
                "(and ckpt_path=auto, the default) to continue.",
                file=sys.stderr,
                flush=True,
            )
        if held:
            signal.signal(requeue, launcher)
            launcher(*held[0])  # submitit: requeue the job, exit
        raise SystemExit(EXIT_SIGTERM) from None
    finally:
        if holding:
            signal.signal(requeue, launcher)


@contextmanager
def exits_on_stop_signals(what: str, rerun: str = "run the same command again"):
    """For tools that start worker processes (the CRF search, crf_eval): SIGTERM or SIGINT ends
    the block with SystemExit 143 / 130 and one line. Without it SIGTERM killed the main process
    alone: its pool workers went on computing for minutes, holding stdout open (`| tee` hung),
    and the run lock's `.owner` stayed. The SystemExit unwinds through the pools' `with` blocks
    (`deeplab.crf.parallel.worker_pool` kills their workers) and runs atexit handlers (the lock)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers belong to the main thread
        return

    def stop(signum: int, frame: Any) -> None:
        for sig in handled:  # a second signal while stopping must not cut the cleanup short
            signal.signal(sig, signal.SIG_IGN)
        name = signal.Signals(signum).name
        print(f"Stopped by {name}: {what} did not finish; {rerun}.", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SIGTERM if signum == signal.SIGTERM else EXIT_SIGINT)

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, stop) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
