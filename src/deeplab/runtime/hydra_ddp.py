"""Make Lightning's DDP launcher work inside Hydra multirun jobs (a Hydra callback).

Lightning starts DDP ranks 1..N-1 by re-running the script with the parent's `sys.argv` plus
`hydra.run.dir=<HydraConfig run.dir>` (lightning_fabric `_hydra_subprocess_cmd`). In a multirun job
that goes wrong twice over: `sys.argv` still holds `-m` and the whole sweep, so every child starts
the sweep again in a new folder, and `run.dir` is not the job's folder. After the first job the
launcher also leaves LOCAL_RANK/WORLD_SIZE/MASTER_PORT in the environment and its process group
alive, so the next job's Lightning believes an outside launcher made its processes, or reuses a
group whose other ranks have exited, and hangs.

`MultirunDDP` fixes these for the length of each job: argv becomes this job's own overrides
(one job: no `-m`, and `hydra.mode=RUN` against experiment files that set MULTIRUN), `run.dir`
becomes the job's output folder, and when the job ends the environment is put back and the
process group destroyed. The children then work in the parent's job folder (only rank 0 writes
files). Registered under `hydra.callbacks` in conf/train.yaml; it does nothing outside multirun.
"""

import os
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, read_write
from torch import distributed


class MultirunDDP(Callback):
    def __init__(self) -> None:
        self._saved: tuple[list[str], dict[str, str]] | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        self._saved = (list(sys.argv), dict(os.environ))
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task, "hydra.mode=RUN"]
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if self._saved is None:
            return
        sys.argv, environ = self._saved
        os.environ.clear()
        os.environ.update(environ)
        if distributed.is_available() and distributed.is_initialized():
            distributed.destroy_process_group()
        self._saved = None
