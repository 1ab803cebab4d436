"""metrics.json (design.md I6) and the final metrics table."""

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import UserError

SUMMARY = ("mIoU", "pixel_acc", "mean_acc", "fwIoU")


def as_metrics(results: dict) -> dict:
    """`{"val": scores, "val_crf": ...}` -> I6 keys: `val/mIoU`, ..., `val/IoU` {class: %}."""
    return {f"{prefix}/{k}": v for prefix, r in results.items() for k, v in r.items()}


def write_metrics(path: Path, metrics: dict) -> None:
    with written_atomically(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")


def check_own_run_dir(run_dir: Path, checkpoint: str) -> None:
    """Refuse, before any work, an evaluation whose run directory holds another run's results
    (`hydra.run.dir=<a training run>`): its metrics.json would be overwritten. The folder of an
    earlier evaluation of the same checkpoint may be reused."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = None
    if isinstance(previous, dict) and previous.get("checkpoint") == str(checkpoint):
        return
    raise UserError(
        f"hydra.run.dir={run_dir} holds the results of another run ({path}), which this "
        "evaluation would overwrite: leave hydra.run.dir out (each evaluation gets a folder of "
        "its own) or pick an empty folder"
    )


def print_table(metrics: dict, title: str = "Validation (whole split, %)") -> None:
    """Scores as columns and per-class IoU as rows, one column per prefix (val_net: the network
    alone when it ends in a CRF-RNN layer, val, val_crf)."""
    prefixes = [p for p in ("val_net", "val", "val_crf") if f"{p}/mIoU" in metrics]
    table = Table(title=title)
    table.add_column("metric")
    for prefix in prefixes:
        table.add_column(prefix, justify="right")
    for key in SUMMARY:
        table.add_row(key, *(f"{metrics[f'{p}/{key}']:.2f}" for p in prefixes))
    for name in metrics[f"{prefixes[0]}/IoU"]:
        values = [metrics[f"{p}/IoU"][name] for p in prefixes]
        table.add_row(f"IoU {name}", *("-" if v is None else f"{v:.2f}" for v in values))
    for key in ("params", "train_img_per_s"):
        if key in metrics:
            table.add_row(key, f"{metrics[key]:,.6g}", *[""] * (len(prefixes) - 1))
    Console().print(table)
