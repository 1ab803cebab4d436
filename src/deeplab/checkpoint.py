"""Loading weights safely: a checkpoint from another class count or architecture fails clearly."""

from pathlib import Path

import torch
from torch import nn


def describe(net: nn.Module, num_classes: int) -> dict:
    """What a checkpoint records about its network, to check against the one loading it."""
    return {"network": type(net).__name__, "num_classes": num_classes}


def check_compatible(
    state_dict: dict, net: nn.Module, meta: dict | None, num_classes: int, source
) -> None:
    """Raise ValueError naming the checkpoint and the fix if `state_dict` does not fit `net`.

    `state_dict` holds the network's own keys (no `net.` prefix); `meta` is `describe()` of
    the saving run.
    """
    if meta and meta.get("num_classes") != num_classes:
        raise ValueError(
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
        raise ValueError(
            f"checkpoint {source}{trained} does not fit the configured {type(net).__name__}: "
            + "; ".join(details)
            + ". Use the same model / backbone / model.width_mult settings it was trained with."
        )


def network_state(checkpoint: dict, prefix: str = "net.") -> dict:
    """The network's weights from a Lightning checkpoint of `SegmentationModule` (or a bare one)."""
    state = checkpoint.get("state_dict", checkpoint)
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)} or state


def load_network(net: nn.Module, path: str | Path, num_classes: int) -> nn.Module:
    """Load a training checkpoint's weights into `net` after checking that they fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist: set ckpt_path to a .ckpt file")
    # Our own Lightning checkpoints hold optimizer and loop state besides tensors.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state = network_state(checkpoint)
    check_compatible(state, net, checkpoint.get("deeplab"), num_classes, path)
    net.load_state_dict(state)
    return net
