"""Train a DeepLab v2 model: `python src/train.py [group=option ...] [key=value ...]`.

Fits, validates the final weights on the whole val split (and after the CRF when `crf` is set),
writes metrics.json, predictions and figures into the Hydra run directory.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.engine.pipeline import train
from deeplab.runtime.cli import check_command_line, reports_user_errors


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    metrics = train(cfg, HydraConfig.get().runtime.output_dir)
    return metrics["val/mIoU"]  # the objective for Hydra sweepers


if __name__ == "__main__":
    check_command_line(sys.argv[1:], "train")  # Hydra's own errors, as one message
    main()
