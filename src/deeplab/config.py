"""Compose the repo's Hydra configs in-process (tests, notebooks) exactly as the apps do."""

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(config_name: str = "train", overrides: list[str] | None = None) -> DictConfig:
    """`compose("train", ["debug=smoke", "data=synthetic"])` == what `src/train.py ...` sees."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=list(overrides or []))
