"""Prints the paper's Table 1 columns for any configured network, e.g.

    python src/describe.py model=fov_7x7_r4
    python src/describe.py model=aspp_l backbone=resnet101 model.msc=true

The network is built on the `meta` device (shapes only, no memory or weights), so even the 134M
parameter models describe themselves in about a second. FOV = 8 * r * (k - 1) + 32 (paper.md §1);
networks without an atrous head (FCN-8s, RefineNet) show "-" for kernel, rate and FOV.
"""

import sys

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict

import deeplab.data  # noqa: F401  data=folder: the resolver that reads the class count
from deeplab.models.table1_columns import format_table, table1_columns
from deeplab.runtime.cli import check_command_line, reports_user_errors
from deeplab.runtime.config_checks import check_config


@hydra.main(version_base="1.3", config_path="../conf", config_name="describe")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    with open_dict(cfg):
        cfg.model.backbone.pretrained = None  # weights do not change the description
    with torch.device("meta"):
        model = instantiate(cfg.model)  # design.md I3: the network
    choices = HydraConfig.get().runtime.choices
    row = {"model": choices["model"], "backbone": choices["backbone"]}
    print(format_table([row | table1_columns(model, cfg.input_size)]))


if __name__ == "__main__":
    check_command_line(sys.argv[1:], "describe")  # Hydra's own errors, as one message
    main()
