"""The built table in W&B (`experiments/tables.py SWEEP --wandb`): one run of the sweep's group,
job type `table`, holding the table (measured beside the paper) as a `wandb.Table`, as markdown
(the run's notes, and the .md among its files) and the bar chart (docs/wandb.md)."""

import dataclasses
from pathlib import Path

from omegaconf import OmegaConf

from deeplab.runtime.wandb_runs import PROJECT, identity, start_run
from deeplab.tables.build import RowResult
from deeplab.tables.render import cells
from deeplab.tables.runs import Job
from deeplab.tables.spec import TableSpec


def log_table(
    spec: TableSpec, jobs: list[Job], results: list[RowResult], text: str, out_dir: Path
) -> Path:
    """Log the table (`text`: its markdown; `out_dir`: where `write_table` put its chart) as a run
    under `out_dir/<table>_wandb/`; returns that run's folder."""
    import wandb

    rows = [identity(job.path, "table") for job in jobs]
    tags = list(dict.fromkeys(tag for row in rows for tag in row.tags))
    who = dataclasses.replace(rows[0], name=spec.name, tags=tags)
    project = OmegaConf.select(jobs[0].config, "logger.project") or PROJECT  # the jobs' project
    run = start_run(Path(out_dir) / f"{spec.name}_wandb", who, project, notes=text)
    header, body = cells(spec, results)
    run.log(
        {
            spec.name: wandb.Table(columns=header, data=body),
            f"{spec.name} chart": wandb.Image(str(Path(out_dir) / f"{spec.name}.png")),
        }
    )
    snapshot = Path(run.dir) / f"{spec.name}.md"  # a copy: a later rebuild leaves it as logged
    snapshot.write_text(text)
    run.save(str(snapshot), base_path=run.dir, policy="now")
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir
