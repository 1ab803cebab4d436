"""Everything a run prints, also in its folder's `<job name>.log` (train.log, evaluate.log, ...).

Hydra's job logging writes that file only for `logging` calls on loggers that reach the root;
this project and its tools `print` (results tables, rich progress), Lightning's loggers do not
propagate (Lightning gives them their own stderr handler when it is imported first), and a
failed run's traceback is printed by Hydra after the job. `RunLog` (a Hydra callback,
registered in each app's config) therefore tees sys.stdout and sys.stderr into the file,
appending (a requeued run continues its log) and flushing every write, sends the non-propagating
loggers' console handlers through the tee, and writes the traceback of a failed job.
"""

import logging
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves of rich


class Tee:
    """A text stream that writes to `stream` and, without terminal escapes, to `file`."""

    def __init__(self, stream: TextIO, file: TextIO):
        self.stream, self.file = stream, file

    def write(self, text: str) -> int:
        self.stream.write(text)
        if not self.file.closed:
            self.file.write(ANSI_ESCAPE.sub("", text))
            self.file.flush()  # the log must hold what was printed even after a SIGKILL
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the terminal's
        return getattr(self.stream, name)


def log_path(output_dir: str | Path, job_name: str) -> Path:
    """`<job>.log`, Hydra's own log file. Ranks that share the folder under the same job name
    (multi-node DDP started by SLURM, torchrun or by hand) add their rank or node; the ranks
    Lightning starts on a node already have their own name (`<job>_ddp_process_<local rank>`)."""
    for variable, tag in (("RANK", "rank"), ("SLURM_PROCID", "rank"), ("NODE_RANK", "node")):
        if os.environ.get(variable, "0") != "0":
            return Path(output_dir) / f"{job_name}_{tag}{os.environ[variable]}.log"
    return Path(output_dir) / f"{job_name}.log"


class RunLog(Callback):
    def __init__(self) -> None:
        self._saved: tuple | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hydra_cfg = HydraConfig.get()
        path = log_path(hydra_cfg.runtime.output_dir, hydra_cfg.job.name)
        file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in on_job_end)
        out, err = Tee(sys.stdout, file), Tee(sys.stderr, file)
        handlers = [
            handler
            for logger in logging.Logger.manager.loggerDict.values()
            if isinstance(logger, logging.Logger) and not logger.propagate
            for handler in logger.handlers
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr)
        ]
        self._saved = (sys.stdout, sys.stderr, file, [(h, h.stream) for h in handlers])
        for handler in handlers:
            handler.setStream(err if handler.stream is sys.stderr else out)
        sys.stdout, sys.stderr = out, err

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if self._saved is None:
            return
        sys.stdout, sys.stderr, file, handlers = self._saved
        for handler, stream in handlers:
            handler.setStream(stream)
        if job_return is not None and job_return.status == JobStatus.FAILED:
            error = job_return._return_value  # .return_value would raise it
            file.write("".join(traceback.format_exception(error)))
        file.close()
        self._saved = None
