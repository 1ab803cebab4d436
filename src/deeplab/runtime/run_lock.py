"""One live run per run directory: an ownership file taken before the run writes anything.

Run directories are unique by name (conf: `${now:...%f}`), but a person can point two runs at one
folder (`hydra.run.dir=X`, a reused `hydra.sweep.dir`), and they would overwrite each other's
checkpoints and metrics. `RunLock` (a Hydra callback, registered in each app's config) creates
`<dir>/.owner` with O_EXCL and refuses, naming the folder and the fix, while the owner lives.
The owner is stale when its pid is gone on this host, or when it is an earlier attempt of this same
SLURM job (a requeue, possibly on another node); the file is removed when the run ends.

Only rank 0 locks: the other DDP ranks work in rank 0's folder (Lightning restarts the script with
`hydra.run.dir=<rank 0's folder>`; SLURM and torchrun start every rank with the same command).
"""

import atexit
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from deeplab.runtime.cli import EXIT_USER_ERROR
from deeplab.runtime.errors import UnwritableError, UserError

OWNER_FILE = ".owner"
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")


def is_rank_zero() -> bool:
    """Whether this process is global rank 0, from what torchrun, SLURM or Lightning's DDP
    launcher set in the environment (a process started by hand has none of them: rank 0)."""
    return all(os.environ.get(name, "0") == "0" for name in RANK_VARIABLES)


def slurm_job() -> str | None:
    """This SLURM job's id (array jobs: `<job>_<task>`), the same in every requeued attempt."""
    if array := os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
    return os.environ.get("SLURM_JOB_ID")


def this_process() -> dict:
    """Who owns a lock: this process, on this host, in this SLURM job (if any)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job": slurm_job()}


def is_live(owner: dict) -> bool:
    """Whether the run recorded in an owner file may still be writing (this process: no)."""
    if owner == this_process():
        return False
    if owner.get("slurm_job") and owner.get("slurm_job") == slurm_job():
        return False  # an earlier attempt of this job: requeued, so it is over
    if owner.get("host") != socket.gethostname():
        return True  # another machine: its pid cannot be checked from here
    try:
        os.kill(int(owner["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable or half-written by a run that died while writing it: stale


def acquire(run_dir: str | Path) -> Path:
    """Make `run_dir` this process's, or raise a UserError when a live run owns it."""
    run_dir = Path(run_dir)
    path = run_dir / OWNER_FILE
    for _ in range(3):  # a stale file removed by another starter in between: try again
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = read_owner(path)
            if owner and is_live(owner):
                raise UserError(
                    f"run directory {run_dir} is in use by a live run (pid {owner.get('pid')} on "
                    f"{owner.get('host')}, see {path}): give this run its own folder (leave "
                    "hydra.run.dir / hydra.sweep.dir at their unique defaults or pick a new one), "
                    f"or wait for that run to end; if it is not running, delete {path}"
                ) from None
            path.unlink(missing_ok=True)
            continue
        except OSError as err:  # read-only, no permission, a file in the way
            raise unwritable(run_dir, err) from None
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(this_process(), file)
        except OSError as err:  # full disk or quota: never leave an empty owner file
            path.unlink(missing_ok=True)
            raise unwritable(run_dir, err) from None
        atexit.register(release, path)  # also when the run ends by sys.exit (SIGTERM)
        return path
    raise UserError(f"could not take {path}: several runs are starting in {run_dir} at once")


def unwritable(run_dir: Path, err: OSError) -> UnwritableError:
    return UnwritableError(
        f"run directory {run_dir} cannot be written ({err.strerror or err}): nothing was run; "
        "point hydra.run.dir / hydra.sweep.dir at a writable folder with free space"
    )


def release(path: Path) -> None:
    """Remove the owner file if this process still owns it."""
    if read_owner(path) == this_process():
        path.unlink(missing_ok=True)


class RunLock(Callback):
    """Hydra callback: lock the run folder (or the sweep folder and each job's) before Hydra
    writes `.hydra/` or the job writes anything, else print the message and exit 2 (as every
    user error, deeplab.runtime.cli);
    release it at the end."""

    def __init__(self) -> None:
        self._held: list[Path] = []

    def _take(self, run_dir: Any) -> None:
        if not is_rank_zero():
            return
        try:
            self._held.append(acquire(str(run_dir)))
        except UserError as error:
            # Hydra turns a callback's exceptions into warnings and goes on: stop here instead
            print(f"Error: {error}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    def _drop(self) -> None:
        if self._held:
            release(self._held.pop())

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._take(config.hydra.run.dir)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._drop()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._take(config.hydra.sweep.dir)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._drop()

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if HydraConfig.get().mode.name == "MULTIRUN":
            self._take(HydraConfig.get().runtime.output_dir)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if HydraConfig.get().mode.name == "MULTIRUN":
            self._drop()
