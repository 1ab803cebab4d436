"""Speed options of a run (`speed:` in conf/train.yaml), applied to the network in one place.

`atrous_mode` picks how dilated convolutions are computed (`deeplab.models.atrous`; "auto" is
the measured per-device default and changes no numbers beyond float rounding). `channels_last`
and `compile` are off by default: they reorder float arithmetic, so outputs move by rounding
(tests/test_speed.py states the tolerances). Mixed precision and the cuDNN autotuner are
Lightning's own switches: `trainer.precision=bf16-mixed`, `trainer.benchmark=true`.
"""

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from deeplab.models.atrous import set_atrous_mode
from deeplab.runtime.errors import UserError

DEFAULTS = {"atrous_mode": "auto", "channels_last": False, "compile": False}


def apply_speed_options(model: nn.Module, cfg: Mapping | None = None) -> nn.Module:
    """Applies the speed options in `cfg` to `model` in place and returns it.

    The state dict keeps its keys whatever the options (compile is `nn.Module.compile`, which
    wraps `forward` without renaming parameters), so checkpoints stay interchangeable.
    """
    opts = {**DEFAULTS, **dict(cfg or {})}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise UserError(f"speed has unknown keys {sorted(unknown)}; allowed: {sorted(DEFAULTS)}")
    set_atrous_mode(model, opts["atrous_mode"])
    if opts["channels_last"]:
        model.to(memory_format=torch.channels_last)
        model.register_forward_pre_hook(_input_channels_last)
    if opts["compile"]:
        model.compile()
    return model


def _input_channels_last(module: nn.Module, args: tuple) -> tuple:
    """NHWC input too, so the first convolution does not convert back and forth."""
    x, *rest = args
    if isinstance(x, Tensor) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, *rest)
