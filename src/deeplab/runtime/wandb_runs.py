"""How runs look in W&B: a sweep is one group, a run is named by what its row varies, and the
final numbers of metrics.json are the run's summary (docs/wandb.md).

Everything is derived from what Hydra records about a job: `HydraConfig` while the job runs, its
folder's `.hydra/hydra.yaml` afterwards. So a training job, the evaluation of its checkpoint and
the table built from its sweep agree on the group without sharing any state. The sweep folder is
a job's output folder's parent (Hydra's `<sweep dir>/<job num>` layout), never `hydra.sweep.dir`
itself: that is saved unresolved (`${now:...}`) and would resolve to another time when read back.
"""

import netrc
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from deeplab.runtime.atomic import check_writable

PROJECT = "deeplab-v2"  # conf/logger/wandb.yaml's default project
TAG_GROUPS = ("experiment", "backbone", "model", "data")  # config groups whose choice is a tag
RUN_FOLDERS = ("multirun", "outputs")  # Hydra's roots: what follows them names the run or sweep
REACH_TIMEOUT_S = 3.0  # an online run first checks that the W&B host answers, this long at most


@dataclass(frozen=True)
class RunIdentity:
    """Where a run appears in W&B: its group, display name, job type and tags."""

    group: str
    name: str
    job_type: str
    tags: list[str]


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (WANDB_API_KEY or a ~/.netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_host() -> tuple[str, int]:
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    return url.hostname or "api.wandb.ai", url.port or (80 if url.scheme == "http" else 443)


def reachable(host: str, port: int, timeout: float = REACH_TIMEOUT_S) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def offline() -> bool:
    """Offline unless logged in, so nothing ever asks for an account; WANDB_MODE, when set, wins,
    except that an online run without an API key, or without a connection to the W&B host
    (checked in a few seconds), would wait for minutes and then fail: it runs offline instead,
    with one line that says why (WANDB_MODE is set to offline for this process, so every later
    run and wandb itself agree)."""
    mode = os.environ.get("WANDB_MODE")
    if mode not in (None, "online", "run"):
        return False  # offline, disabled, dryrun: wandb reads it itself
    logged_in = wandb_logged_in()
    if mode is None and not logged_in:
        return True
    host, port = wandb_host()
    if not logged_in:
        why = "no W&B API key (WANDB_API_KEY, or run `wandb login`)"
    elif not reachable(host, port):
        why = f"{host}:{port} cannot be reached within {REACH_TIMEOUT_S:g} s"
    else:
        return False
    print(
        f"W&B: {why}: logging offline instead (upload later with `wandb sync <run dir>/wandb`)",
        file=sys.stderr,
        flush=True,
    )
    os.environ["WANDB_MODE"] = "offline"
    return True


def folder_id(folder: str | Path) -> str:
    """`multirun/2026-12-03/05-20-00-123456` -> `2026-12-03/05-20-00-123456`: the path after the
    last `multirun` or `outputs` folder, else the folder's own name."""
    parts = Path(folder).resolve().parts
    roots = [i for i, part in enumerate(parts) if part in RUN_FOLDERS]
    return "/".join(parts[roots[-1] + 1 :]) if roots and roots[-1] + 1 < len(parts) else parts[-1]


def hydra_record(run_dir: str | Path) -> DictConfig | None:
    """Hydra's record of the job whose output folder is `run_dir`: the live `HydraConfig` when
    that job is the one running, else its saved `.hydra/hydra.yaml`; None if Hydra never ran it."""
    run_dir = Path(run_dir).resolve()
    if HydraConfig.initialized():
        live = HydraConfig.get()
        output_dir = OmegaConf.select(live, "runtime.output_dir", default=None)
        if output_dir and Path(output_dir).resolve() == run_dir:
            return live
    saved = run_dir / ".hydra" / "hydra.yaml"
    return OmegaConf.load(saved).hydra if saved.is_file() else None


def swept_keys(hydra: DictConfig, sweep_dir: Path) -> set[str]:
    """What a multirun varies: the sweeper's `params` (e.g. `model` in conf/experiment/table1.yaml)
    and the command line's sweeps (`model=a,b`), read from the sweep's multirun.yaml."""
    keys = set(OmegaConf.select(hydra, "sweeper.params") or {})
    multirun_yaml = sweep_dir / "multirun.yaml"
    if multirun_yaml.is_file():
        command_line = OmegaConf.select(OmegaConf.load(multirun_yaml), "hydra.overrides.task")
        parsed = OverridesParser.create().parse_overrides(list(command_line or []))
        keys |= {o.key_or_group for o in parsed if o.is_sweep_override()}
    return keys


def identity(run_dir: str | Path, job_type: str) -> RunIdentity:
    """The W&B identity of the job that wrote (or is writing) `run_dir`.

    Group: `<experiment>/<sweep folder id>` for every job of a multirun, `<experiment>/<run folder
    id>` for a single run (experiment: the `experiment=` choice, else the app's name). Name: the
    job's swept overrides (`model=fov_4x4_r8`); a single run, which varies nothing, is named by all
    its overrides. Tags: the experiment, backbone, model and data choices.
    """
    hydra = hydra_record(run_dir)
    if hydra is None:  # a run started from Python (tests, notebooks), not by a Hydra app
        return RunIdentity(f"{job_type}/{folder_id(run_dir)}", Path(run_dir).name, job_type, [])
    choices = OmegaConf.select(hydra, "runtime.choices", default={})
    choices = {str(k): str(v) for k, v in choices.items() if v is not None}
    app = OmegaConf.select(hydra, "job.name") or job_type
    output_dir = Path(OmegaConf.select(hydra, "runtime.output_dir", default=str(run_dir)))
    mode = OmegaConf.select(hydra, "mode")
    multirun = getattr(mode, "name", mode) == "MULTIRUN"
    folder = output_dir.parent if multirun else output_dir
    overrides = [str(o) for o in OmegaConf.select(hydra, "overrides.task", default=[])]
    swept = swept_keys(hydra, folder) if multirun else set()
    parsed = OverridesParser.create().parse_overrides(overrides)
    varied = [o for o, p in zip(overrides, parsed, strict=True) if p.key_or_group in swept]
    tags = list(dict.fromkeys(choices[g] for g in TAG_GROUPS if g in choices))
    return RunIdentity(
        group=f"{choices.get('experiment', app)}/{folder_id(folder)}",
        name=",".join(varied or overrides) or app,
        job_type=job_type,
        tags=tags,
    )


def checkpoint_identity(ckpt_path: str | Path, run_dir: str | Path, job_type: str) -> RunIdentity:
    """A run on a checkpoint (evaluate) joins the group of the run that trained it and takes its
    name; a checkpoint from outside a Hydra run folder leaves the run its own identity."""
    ckpt = Path(ckpt_path)
    trained_in = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if (trained_in / ".hydra" / "hydra.yaml").is_file():
        return identity(trained_in, job_type)
    return identity(run_dir, job_type)


def check_wandb_folders(save_dir: str | Path) -> None:
    """Refuse, in one line, folders W&B cannot write (its run folder, WANDB_DIR): wandb itself
    fails later with a traceback from its service process."""
    check_writable(save_dir, "hydra.run.dir")
    if os.environ.get("WANDB_DIR"):
        check_writable(os.environ["WANDB_DIR"], "WANDB_DIR")


def start_run(save_dir: str | Path, who: RunIdentity, project: str = PROJECT, **kwargs):
    """A W&B run (offline unless logged in) writing under `save_dir/wandb/`."""
    import wandb

    check_wandb_folders(save_dir)
    return wandb.init(
        dir=str(save_dir),
        project=project,
        group=who.group,
        name=who.name,
        job_type=who.job_type,
        tags=who.tags,
        mode="offline" if offline() else None,
        **kwargs,
    )


def log_final_metrics(run, metrics: dict) -> None:
    """metrics.json into the run: every number under its own name in the summary (the runs table
    sorts by `val/mIoU`, `val_crf/mIoU`, `params`, ...), the per-class IoU as one table with a
    column per split (`val/IoU`, `val_crf/IoU`)."""
    import wandb

    run.summary.update({k: v for k, v in metrics.items() if not isinstance(v, dict)})
    per_class = {k: v for k, v in metrics.items() if isinstance(v, dict)}
    if per_class:
        classes = list(next(iter(per_class.values())))
        rows = [[name, *(iou.get(name) for iou in per_class.values())] for name in classes]
        run.log({"IoU per class": wandb.Table(columns=["class", *per_class], data=rows)})
