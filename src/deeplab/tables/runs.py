"""Read a Hydra multirun folder: one `Job` per job folder, with its config, choices and metrics."""

import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.runtime.user_files import read_file


@dataclass
class Job:
    """One Hydra job folder. `metrics` is None when the job wrote no (readable) metrics.json:
    it failed, was killed, or is still running."""

    path: Path
    config: DictConfig
    choices: dict[str, str]
    metrics: dict | None


def _choices(hydra_dir: Path) -> dict[str, str]:
    """Config-group choices of a job: Hydra's runtime record, else its `group=option` overrides."""
    hydra_yaml = hydra_dir / "hydra.yaml"
    if hydra_yaml.is_file():
        choices = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.choices")
        if choices is not None:
            return {str(k): str(v) for k, v in choices.items()}
    overrides = hydra_dir / "overrides.yaml"
    pairs = OmegaConf.load(overrides) if overrides.is_file() else []
    return dict(str(o).lstrip("+~").split("=", 1) for o in pairs if "=" in str(o))


METRICS_FIX = "delete the job folder or run the job again"


def _metrics(job_dir: Path) -> dict | None:
    """A job's metrics.json; None when it is absent or cut off (a job killed while writing:
    counted as failed); a UserError naming it when it is something else than a JSON object."""
    path = job_dir / "metrics.json"
    if not path.is_file():
        return None
    try:
        metrics = read_file(lambda p: p.read_text(encoding="utf-8"), path, "metrics", METRICS_FIX)
        metrics = json.loads(metrics)
    except json.JSONDecodeError:
        return None
    if not isinstance(metrics, dict):
        raise UserError(
            f"metrics {path} holds a JSON {type(metrics).__name__}, not the object train.py "
            f"writes: {METRICS_FIX}"
        )
    return metrics


def metric_number(job: Job, key: str) -> float | None:
    """`key` of a job's metrics as a number (None when absent), or a UserError naming the file."""
    value = (job.metrics or {}).get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UserError(
            f"metrics {job.path / 'metrics.json'}: {key} is {value!r}, not a number: {METRICS_FIX}"
        )
    return float(value)


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder directly under `sweep_dir` (Hydra's `<sweep dir>/<job num>/` layout)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise MissingFileError(f"{sweep_dir} is not a folder: pass a Hydra multirun folder")
    jobs = []
    for config_file in sorted(sweep_dir.glob("*/.hydra/config.yaml")):
        job_dir = config_file.parent.parent
        config = read_file(
            OmegaConf.load, config_file, "job config", "delete the job folder or run the job again"
        )
        jobs.append(Job(job_dir, config, _choices(config_file.parent), _metrics(job_dir)))
    if not jobs:
        raise MissingFileError(
            f"no Hydra job folders (*/.hydra/config.yaml) under {sweep_dir}: pass the folder that "
            "`python src/train.py -m ...` printed as its sweep output dir (multirun/DATE/TIME)"
        )
    return sorted(jobs, key=lambda job: _job_order(job.path.name))


def _job_order(name: str) -> tuple[int, str]:
    """Numeric job folders (0, 1, ..., 10) in number order, others after them by name."""
    return (int(name), "") if name.isdigit() else (1 << 30, name)


def table_name(jobs: list[Job]) -> str:
    """The `table:` key the experiment config put into every job of the sweep."""
    names = {OmegaConf.select(job.config, "table") for job in jobs}
    if names == {None}:
        raise UserError(
            f"the jobs under {jobs[0].path.parent} have no `table` key in .hydra/config.yaml: "
            "run the sweep with experiment=table1..table4, or pass --table NAME"
        )
    if len(names) > 1:
        found = sorted(map(str, names))
        raise UserError(
            f"the jobs under {jobs[0].path.parent} come from different tables {found}: "
            "pass one sweep's folder, or --table NAME"
        )
    return names.pop()
