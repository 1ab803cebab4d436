"""Prints the paper's Table 1 columns for any configured network, e.g.

    python src/describe.py model=fov_7x7_r4
    python src/describe.py model=aspp_l backbone=resnet101 model.msc=true

The network is built on the `meta` device (shapes only, no memory or weights), so even the 134M
parameter models describe themselves in about a second. FOV = 8 * r * (k - 1) + 32 (SPEC §1);
networks without an atrous head (FCN-8s, RefineNet) show "-" for kernel, rate and FOV.
"""

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import deeplab.data  # noqa: F401  data=folder: the resolver that reads the class count
from deeplab.cli import reports_user_errors
from deeplab.models import count_parameters
from deeplab.receptive_field import paper_fov
from deeplab.validate import check_config

COLUMNS = ("model", "backbone", "kernel", "rate", "FOV", "params", "logits", "GFLOPs")


def describe(model: nn.Module, input_size: int = 321) -> dict[str, str]:
    """Kernel, rate, FOV, parameters, logit size and GFLOPs (one image, eval mode)."""
    net = getattr(model, "net", model)  # MSC wraps the network it runs
    k, rates = getattr(net, "kernel_size", None), getattr(net, "rates", None)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        x = torch.empty(1, 3, input_size, input_size, device=next(model.parameters()).device)
        logits = model.eval()(x)
    return {
        "kernel": f"{k}x{k}" if k else "-",
        "rate": "/".join(str(r) for r in rates) if rates else "-",
        "FOV": "/".join(str(paper_fov(k, r)) for r in rates) if k and rates else "-",
        "params": f"{count_parameters(model) / 1e6:.2f}M",
        "logits": "x".join(str(s) for s in logits.shape[-2:]),
        "GFLOPs": f"{flops.get_total_flops() / 1e9:.1f}",
    }


def format_table(rows: list[dict[str, str]]) -> str:
    """A markdown table with the columns of COLUMNS."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row.get(c, "-") for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path="../conf", config_name="describe")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    check_config(cfg)
    with open_dict(cfg):
        cfg.model.backbone.pretrained = None  # weights do not change the description
    with torch.device("meta"):
        model = instantiate(cfg.model)
    choices = HydraConfig.get().runtime.choices
    row = {"model": choices["model"], "backbone": choices["backbone"]}
    print(format_table([row | describe(model, cfg.input_size)]))


if __name__ == "__main__":
    main()
