"""Segmentation scores from one confusion matrix over a whole split (paper.md §8).

n[i, j] counts pixels of true class i predicted as j (torchmetrics' layout: rows are the truth).
Empty classes: a class with no pixel in the truth and none in the prediction has an empty IoU
denominator. The official MATLAB code divides by 1 there (IoU 0, still averaged); we instead leave
such classes out (IoU None in metrics.json), so a split that lacks a class is not penalised for it.
The two agree whenever every class occurs, as on the VOC and Cityscapes val sets. Mean accuracy
likewise averages over the classes that occur in the truth. mIoU is always the mean of the reported
per-class IoUs.
"""

import torch
from torch import Tensor
from torchmetrics.classification import MulticlassConfusionMatrix


def confusion_matrix(num_classes: int, ignore_index: int = 255) -> MulticlassConfusionMatrix:
    """A summing K x K confusion matrix that skips `ignore_index` and syncs across DDP ranks."""
    return MulticlassConfusionMatrix(
        num_classes=num_classes, ignore_index=ignore_index, normalize="none", validate_args=False
    )


def scores(confusion: Tensor, class_names: list[str]) -> dict:
    """Pixel acc, mean acc, mIoU, fwIoU and per-class IoU, all in percent, from a K x K matrix."""
    n = confusion.double().cpu()
    if n.shape != (len(class_names), len(class_names)):
        raise ValueError(
            f"confusion matrix {tuple(n.shape)} does not match {len(class_names)} classes"
        )
    diag = n.diag()
    truth = n.sum(1)  # t_i
    union = truth + n.sum(0) - diag
    total = truth.sum().clamp(min=1)
    present = union > 0
    iou = torch.where(present, diag / union.clamp(min=1), torch.nan)
    acc = diag[truth > 0] / truth[truth > 0]
    return {
        "pixel_acc": 100 * (diag.sum() / total).item(),
        "mean_acc": 100 * acc.mean().item() if len(acc) else 0.0,
        "mIoU": 100 * iou[present].mean().item() if present.any() else 0.0,
        "fwIoU": 100 * (truth[present] * iou[present]).sum().item() / total.item(),
        "IoU": {
            name: (100 * v.item() if ok else None)
            for name, v, ok in zip(class_names, iou, present, strict=True)
        },
    }


def flatten(prefix: str, result: dict) -> dict[str, float]:
    """Scalars for loggers: `val/mIoU`, ..., `val/IoU/<class>` (absent classes skipped)."""
    flat = {f"{prefix}/{k}": v for k, v in result.items() if k != "IoU"}
    flat.update({f"{prefix}/IoU/{k}": v for k, v in result["IoU"].items() if v is not None})
    return flat
