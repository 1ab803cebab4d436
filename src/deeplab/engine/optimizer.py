"""DeepLab's per-group LR multipliers on SGD (or AdamW), and the poly / step schedules.

The Caffe solvers (paper.md §2) give biases 2x LR and no decay, and the final classifier 10x
(weights) and 20x (biases). SGD is the paper's optimizer; AdamW is there for the from-scratch CPU
demo, which has no ImageNet initialization and only minutes to learn in. Schedules are
multipliers of the base LR indexed by optimizer step, applied with `LambdaLR` every step;
Lightning counts optimizer steps (not micro-batches) in `global_step`, so with gradient
accumulation `trainer.max_steps` is the paper's iteration count.
"""

from dataclasses import dataclass

import torch
from torch import nn

from deeplab.runtime.errors import UserError

OPTIMIZERS = ("sgd", "adamw")


def param_groups(
    net: nn.Module,
    lr: float,
    weight_decay: float,
    classifier_lr_mult: float = 10.0,
    crf_rnn_lr_mult: float = 1.0,
) -> list[dict]:
    """Split trainable parameters into DeepLab's four groups; frozen ones are left out.

    Biases are the 1-D parameters (conv/linear biases); the classifier is whatever
    `net.classifier_parameters()` names, so the split works for any network that has it.
    The classifier's weights get `classifier_lr_mult` x LR and its biases twice that (10x / 20x).
    A CRF-RNN layer's parameters (`net.crf_parameters()`) get `crf_rnn_lr_mult` x LR and no
    decay, which would pull its kernel weights and label compatibility towards no CRF at all.
    """
    if not hasattr(net, "classifier_parameters"):
        raise ValueError(
            f"{type(net).__name__} has no classifier_parameters(): every network must name its "
            "final classifier layers so that they get LR x10 / x20 (paper.md §2)."
        )
    classifier = {id(p) for p in net.classifier_parameters()}
    crf = {id(p) for p in getattr(net, "crf_parameters", list)()}
    # A network may slow its backbone down (RefineNet's recipe: the ResNet at 0.1x).
    inner = net
    while hasattr(inner, "net"):  # MSC, CRF-RNN: the network they run
        inner = inner.net
    mult = getattr(inner, "backbone_lr_mult", 1.0)
    backbone = {id(p) for p in inner.backbone.parameters()} if mult != 1.0 else set()
    # (name, lr multiplier, weight decay multiplier), in the order of the param groups.
    groups = (
        ("weight", 1.0, 1.0),
        ("bias", 2.0, 0.0),
        ("classifier_weight", classifier_lr_mult, 1.0),
        ("classifier_bias", 2.0 * classifier_lr_mult, 0.0),
        ("backbone_weight", mult, 1.0),
        ("backbone_bias", 2.0 * mult, 0.0),
        ("crf", crf_rnn_lr_mult, 0.0),
    )
    buckets: dict[str, list[nn.Parameter]] = {name: [] for name, _, _ in groups}
    for p in net.parameters():
        if not p.requires_grad:
            continue
        if id(p) in crf:
            buckets["crf"].append(p)
            continue
        prefix = "classifier_" if id(p) in classifier else "backbone_" if id(p) in backbone else ""
        buckets[prefix + ("bias" if p.ndim == 1 else "weight")].append(p)
    return [
        {
            "name": name,
            "params": buckets[name],
            "lr": lr * lr_mult,
            "weight_decay": weight_decay * wd_mult,
        }
        for name, lr_mult, wd_mult in groups
        if buckets[name]
    ]


def build_sgd(
    net: nn.Module,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    classifier_lr_mult: float = 10.0,
    crf_rnn_lr_mult: float = 1.0,
) -> torch.optim.SGD:
    """SGD over `param_groups(net)`; each group's `initial_lr` is its multiplied base LR."""
    groups = param_groups(net, lr, weight_decay, classifier_lr_mult, crf_rnn_lr_mult)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum)


def build_optimizer(
    net: nn.Module,
    name: str = "sgd",
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    classifier_lr_mult: float = 10.0,
    crf_rnn_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """`optim.name`: sgd (the paper's) or adamw (betas (momentum, 0.999), decoupled decay), both
    over the same parameter groups, so biases keep no decay and the LR multipliers apply."""
    if name == "sgd":
        return build_sgd(net, lr, momentum, weight_decay, classifier_lr_mult, crf_rnn_lr_mult)
    if name == "adamw":
        groups = param_groups(net, lr, weight_decay, classifier_lr_mult, crf_rnn_lr_mult)
        return torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    raise UserError(f"optim.name={name!r} is unknown; use one of {OPTIMIZERS}")


@dataclass
class Poly:
    """lr = base * (1 - step / max_steps) ** power, updated every step (Caffe `lr_policy: poly`)."""

    max_steps: int
    power: float = 0.9

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.max_steps) ** self.power


@dataclass
class Step:
    """lr = base * gamma ** (step // step_size) (Caffe `lr_policy: step`); `max_steps` is unused."""

    max_steps: int
    step_size: int = 2000
    gamma: float = 0.1

    def __call__(self, step: int) -> float:
        return self.gamma ** (step // self.step_size)


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule, max_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over all groups; `schedule` is a factory such as `partial(Poly, power=0.9)`."""
    if max_steps is None or max_steps <= 0:
        raise UserError(
            f"trainer.max_steps is {max_steps}: the iteration-based LR schedules need it set, "
            "e.g. trainer.max_steps=20000 (paper.md §2)."
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule(max_steps=max_steps))
