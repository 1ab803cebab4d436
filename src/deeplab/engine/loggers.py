"""Experiment loggers; W&B runs offline unless the user is logged in or WANDB_MODE decides."""

from pathlib import Path

import hydra
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, WandbLogger

from deeplab.runtime.wandb_runs import (
    PROJECT,
    check_wandb_folders,
    checkpoint_identity,
    identity,
    offline,
    wandb_logged_in,
)

__all__ = ["build_loggers", "wandb_logged_in", "wandb_logger"]


def wandb_logger(
    save_dir: str,
    project: str = PROJECT,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    job_type: str = "train",
    checkpoint: str | None = None,
    **kwargs,
) -> WandbLogger:
    """A WandbLogger that never asks for a login: offline unless logged in; WANDB_MODE wins.

    Group, name and tags default to the job's place in its sweep (runtime.wandb_runs.identity;
    with `checkpoint`, the place of the run that trained it); the user's own values win."""
    who = checkpoint_identity(checkpoint, save_dir, job_type) if checkpoint else None
    who = who or identity(save_dir, job_type)
    check_wandb_folders(save_dir)
    return WandbLogger(
        save_dir=save_dir,
        project=project,
        offline=offline(),
        log_model=False,
        name=name or who.name,
        group=group or who.group,
        tags=list(tags) if tags else who.tags,
        job_type=job_type,
        **kwargs,
    )


def build_loggers(
    cfg: DictConfig | None, run_dir: Path, job_type: str = "train", checkpoint: str | None = None
) -> list[Logger]:
    """The configured logger (conf/logger/*.yaml), writing into the run directory; W&B's also
    learns the job type and the checkpoint the run scores."""
    if cfg is None:
        return []
    run = {}
    if hydra.utils.get_object(cfg._target_) is wandb_logger:
        run = {"job_type": job_type, "checkpoint": checkpoint}
    return [hydra.utils.instantiate(cfg, save_dir=str(run_dir), **run)]
