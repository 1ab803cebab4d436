"""The paper's Table 1 columns (kernel, rate, field of view, parameters, logit size, GFLOPs) of
any network, measured on the network itself (paper.md §1)."""

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from deeplab.models.receptive_field import paper_fov


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (the paper's Params column counts both)."""
    return sum(p.numel() for p in model.parameters())


COLUMNS = ("model", "backbone", "kernel", "rate", "FOV", "params", "logits", "GFLOPs")


def table1_columns(model: nn.Module, input_size: int = 321) -> dict[str, str]:
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
