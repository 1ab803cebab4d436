"""How every entry point reports a user's mistake: the message alone, exit status 2 (design.md I9).

`@reports_user_errors` goes under `@hydra.main` (Hydra unwraps it to find the config path) or on
a `python -m` tool's `main`. A `UserError` prints `Error: <message>` on stderr and exits 2;
with HYDRA_FULL_ERROR=1 it is re-raised with its traceback. Any other exception is a bug and
keeps its traceback (Hydra prints it as usual).
"""

import functools
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from deeplab.runtime.errors import UserError

EXIT_USER_ERROR = 2  # argparse's status for a bad command line; 1 stays "it crashed"


def full_error() -> bool:
    """Whether the user asked for tracebacks, with Hydra's own switch."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def reports_user_errors(fn: Callable) -> Callable:
    """Wrap `fn` so that a `UserError` ends the program with its message alone.

    In a Hydra multirun a failed job must not end the sweep (the exit used to stop it at the
    first bad value): its error is printed into its log, recorded, and the next job starts;
    `FailedJobs` lists them all when the sweep ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if in_multirun():
                record_failure(err)
                return None
            if not isinstance(err, UserError) or full_error():
                raise
            print(f"Error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# (job, its error's first line, whether it is a UserError) for each failed job of this sweep
FAILED_JOBS: list[tuple[str, str, bool]] = []


def record_failure(err: Exception) -> None:
    """Print a failed job's error (a bug with its traceback) and remember it for the summary."""
    user_error = isinstance(err, UserError)
    if user_error and not full_error():
        print(f"Error: {err}", file=sys.stderr, flush=True)
    else:
        traceback.print_exc()
    hydra = HydraConfig.get()
    job = f"#{hydra.job.num} ({' '.join(hydra.overrides.task)})"
    FAILED_JOBS.append((job, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                        user_error))  # fmt: skip


class FailedJobs(Callback):
    """Hydra callback: when a multirun ends, list the jobs that failed and exit non-zero (2 when
    all were user errors, 1 when one was a bug). Registered first in conf/hydra/default.yaml, so
    that it runs after the other callbacks' `on_multirun_end` (Hydra calls them in reverse)."""

    def __init__(self) -> None:
        self.jobs = 0

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        self.jobs += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not FAILED_JOBS:
            return
        lines = [f"  {job}: {error}" for job, error, _ in FAILED_JOBS]
        print(
            f"Error: {len(FAILED_JOBS)} of {self.jobs} jobs failed (the others finished, see "
            f"{config.hydra.sweep.dir}):\n" + "\n".join(lines),
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_USER_ERROR if all(user for *_, user in FAILED_JOBS) else 1)
