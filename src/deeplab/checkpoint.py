"""Loading weights safely: a checkpoint from another class count or architecture fails clearly."""

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deeplab.errors import MissingFileError, UserError


def describe(
    net: nn.Module,
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model: dict | None = None,
) -> dict:
    """What a checkpoint records about its run, to check against the one loading it: the network,
    class count, input normalization and the resolved `model` config (for override hints)."""
    meta: dict = {"network": type(net).__name__, "num_classes": num_classes}
    if mean is not None and std is not None:
        meta["normalization"] = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    if model is not None:
        meta["model"] = model
    return meta


def _hydra_value(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def model_overrides(saved: dict, current: dict, prefix: str = "model") -> list[str]:
    """Command-line overrides that turn the `current` model config into the `saved` one.

    Weight-file paths (`pretrained`) are left out: they only initialise training.
    """
    out = []
    for key in sorted(saved):
        if key == "pretrained" or key not in current:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += model_overrides(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}={_hydra_value(a)}")
    return out


def check_normalization(meta: dict | None, mean, std, source) -> None:
    """Raise ValueError if this run normalizes inputs differently from the training run: the
    network would still load and run, and silently score worse."""
    saved = (meta or {}).get("normalization")
    if saved is None:
        return
    if np.allclose(saved["mean"], mean) and np.allclose(saved["std"], std):
        return
    raise UserError(
        f"checkpoint {source} was trained on inputs normalized with mean {saved['mean']} and std "
        f"{saved['std']}, but this run uses mean {list(mean)} and std {list(std)}: pass "
        f'"data.mean={_hydra_value(saved["mean"])}" "data.std={_hydra_value(saved["std"])}".'
    )


def check_compatible(
    state_dict: dict,
    net: nn.Module,
    meta: dict | None,
    num_classes: int,
    source,
    model: dict | None = None,
) -> None:
    """Raise ValueError naming the checkpoint and the fix if `state_dict` does not fit `net`.

    `state_dict` holds the network's own keys (no `net.` prefix); `meta` is `describe()` of
    the saving run; `model` is this run's resolved model config, compared with the saved one to
    print the overrides that rebuild the trained network.
    """
    if meta and meta.get("num_classes") != num_classes:
        raise UserError(
            f"checkpoint {source} was trained for {meta['num_classes']} classes, but this run has "
            f"{num_classes} (data.num_classes): pick the data set it was trained on, or start from "
            "ImageNet weights (model.backbone.pretrained) instead of this checkpoint."
        )
    own = net.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        trained = f" (saved from {meta['network']})" if meta else ""
        details = [f"missing {missing[:3]}"] if missing else []
        details += [f"unexpected {unexpected[:3]}"] if unexpected else []
        details += shapes[:3]
        fix = "Use the same model / backbone / model.width_mult settings it was trained with"
        hints = model_overrides(meta["model"], model) if meta and "model" in meta and model else []
        if hints:
            fix += ": " + " ".join(f'"{h}"' for h in hints)
        raise UserError(
            f"checkpoint {source}{trained} does not fit the configured {type(net).__name__}: "
            + "; ".join(details)
            + f". {fix}."
        )


def network_state(checkpoint: dict, prefix: str = "net.") -> dict:
    """The network's weights from a Lightning checkpoint of `SegmentationModule` (or a bare one)."""
    state = checkpoint.get("state_dict", checkpoint)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state


def checked_state(
    checkpoint: dict, net: nn.Module, num_classes: int, mean, std, model: dict | None, source
) -> dict:
    """The network's weights from a loaded checkpoint, once they fit `net` and this run (class
    count, input normalization); evaluation, prediction and resume all load through here."""
    state = network_state(checkpoint)
    meta = checkpoint.get("deeplab")
    check_compatible(state, net, meta, num_classes, source, model)
    check_normalization(meta, mean, std, source)
    return state


def load_network(
    net: nn.Module,
    path: str | Path,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    model: dict | None = None,
) -> nn.Module:
    """Load a training checkpoint's weights into `net` after `checked_state`'s checks."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist: set ckpt_path to a .ckpt file")
    # Our own Lightning checkpoints hold optimizer and loop state besides tensors.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    net.load_state_dict(checked_state(checkpoint, net, num_classes, mean, std, model, path))
    return net
