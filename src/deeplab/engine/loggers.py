"""Experiment loggers; W&B runs offline unless the user is logged in or WANDB_MODE decides."""

import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

import hydra
from omegaconf import DictConfig
from pytorch_lightning.loggers import Logger, WandbLogger


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (WANDB_API_KEY or a ~/.netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_logger(save_dir: str, project: str = "deeplab-v2", **kwargs) -> WandbLogger:
    """A WandbLogger that never asks for a login: offline unless logged in; WANDB_MODE wins."""
    offline = "WANDB_MODE" not in os.environ and not wandb_logged_in()
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        save_dir=save_dir, project=project, offline=offline, log_model=False, **kwargs
    )


def build_loggers(cfg: DictConfig | None, run_dir: Path) -> list[Logger]:
    """The configured logger (conf/logger/*.yaml), writing into the run directory."""
    if cfg is None:
        return []
    return [hydra.utils.instantiate(cfg, save_dir=str(run_dir))]
