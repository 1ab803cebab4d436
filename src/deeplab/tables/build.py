"""Match a sweep's jobs to a paper table's rows and gather the measured values.

A row with no job is "missing", a row whose jobs wrote no metrics.json is "failed", and a
metric a finished job did not produce (e.g. no CRF was run) is "not run": never a zero.
"""

import statistics
from dataclasses import dataclass

from omegaconf import OmegaConf

from deeplab.runtime.errors import UserError
from deeplab.tables.runs import Job, metric_number
from deeplab.tables.spec import Row, TableSpec


@dataclass(frozen=True)
class Value:
    """A measured number (mean over the row's finished jobs) or why there is none."""

    mean: float | None = None
    std: float | None = None
    status: str = "ok"

    def text(self, digits: int) -> str:
        if self.mean is None:
            return self.status
        if self.std is None:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class RowResult:
    row: Row
    jobs: list[Job]
    values: dict[str, Value]
    ran: str


def _value(jobs: list[Job], key: str, scale: float) -> Value:
    if not jobs:
        return Value(status="missing")
    finished = [job for job in jobs if job.metrics is not None]
    if not finished:
        return Value(status="failed")
    found = [metric_number(job, key) for job in finished]
    numbers = [n * scale for n in found if n is not None]
    if not numbers:
        return Value(status="not run")
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return Value(statistics.fmean(numbers), std)


def describe_run(job: Job) -> str:
    """What the job actually trained: width, iterations and global batch (per-process batch x
    gradient accumulation x devices x nodes), so a smoke run is never mistaken for the paper's,
    and the protocol that scored it."""
    cfg = job.config
    parts = []
    width = OmegaConf.select(cfg, "model.width_mult")
    if width is not None and float(width) != 1.0:
        parts.append(f"width {width}")
    steps = OmegaConf.select(cfg, "trainer.max_steps")
    if steps is not None:
        parts.append(f"{steps} it")
    batch = OmegaConf.select(cfg, "data.batch_size")
    if batch is not None:
        unknown = ""
        for key in ("trainer.accumulate_grad_batches", "trainer.devices", "trainer.num_nodes"):
            factor = OmegaConf.select(cfg, key, default=1)
            if isinstance(factor, int) and factor > 0:
                batch *= factor
            else:  # devices=-1 / "auto": the count is only known on the machine that ran it
                unknown = f" x {key.split('.')[1]}={factor}"
        parts.append(f"batch {batch}{unknown}")
    parts.append(scoring_protocol(cfg))
    return ", ".join(parts)


def scoring_protocol(cfg) -> str:
    """Which test protocol scored the job's final validation: the released test nets' (padded to
    `tta.pad_to` with the mean colour, scores zoomed with corners aligned) or the plain one."""
    pad_to = OmegaConf.select(cfg, "tta.pad_to")
    return f"scored padded to {pad_to}" if pad_to else "scored unpadded"


def build_rows(spec: TableSpec, jobs: list[Job]) -> list[RowResult]:
    """One result per paper row, in the paper's order."""
    known = {row.choice for row in spec.rows}
    strays = sorted({job.choices.get(spec.row_group, "?") for job in jobs} - known)
    if strays:
        raise UserError(
            f"jobs with {spec.row_group}={strays} are not rows of {spec.name} "
            f"(rows: {sorted(known)}): is this the right sweep folder?"
        )
    results = []
    for row in spec.rows:
        mine = [job for job in jobs if job.choices.get(spec.row_group) == row.choice]
        values = {m.name: _value(mine, row.key(m), m.scale) for m in spec.measures}
        ran = "; ".join(sorted({describe_run(job) for job in mine}))
        results.append(RowResult(row, mine, values, ran))
    return results
