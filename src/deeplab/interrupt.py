"""Jobs that a scheduler stops and starts again (SLURM time limit, preemption, requeue).

SIGTERM: Lightning's signal connector turns it into `SIGTERMException` at the next batch
boundary (every rank at the same step under DDP), a `SystemExit` with no code, so a stopped run
used to exit 0. `SaveOnSigterm` writes a resumable `last.ckpt` at that step and
`exit_on_sigterm` exits with 143 (128 + SIGTERM, what a shell reports for a process the signal
killed), so schedulers and Hydra count the run as stopped, not done. Ctrl-C (SIGINT) in a fit or
validation is Lightning's: exit status 1.

`ckpt_path=auto` (train.yaml's default) resumes from `<run dir>/checkpoints/last.ckpt` when it
exists: a requeued job, or the same command run again with `hydra.run.dir=<its folder>`.
"""

import sys
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

EXIT_SIGTERM = 143


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
def exit_on_sigterm(trainer: pl.Trainer, last: Path):
    """Turn Lightning's SIGTERMException into exit status 143 with a message on how to resume."""
    try:
        yield
    except SIGTERMException:
        if trainer.is_global_zero:
            print(
                f"Stopped by SIGTERM at step {trainer.global_step}; the checkpoint to resume from "
                f"is {last}. Run the same command with hydra.run.dir={last.parents[1]} (and "
                "ckpt_path=auto, the default) to continue.",
                file=sys.stderr,
                flush=True,
            )
        raise SystemExit(EXIT_SIGTERM) from None
