"""A caffemodel -> `{"state_dict", "overrides", ...}`, checked against the network it names."""

from pathlib import Path

import hydra
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError
from deeplab.weights.caffe.blobs import to_state_dict
from deeplab.weights.caffe.caffemodel import read_caffemodel
from deeplab.weights.caffe.recognise import Recognised, recognise

# Overrides that shape the network (the rest set the input convention and the test protocol).
_MODEL_KEYS = ("model=", "model.", "backbone=", "data.num_classes=")


def build_target(overrides: list[str]) -> tuple[torch.nn.Module, dict]:
    """The network `overrides` compose (`train` config), on the meta device (shapes only), and
    its resolved `model` config, which the file records like a checkpoint does: loading it into
    a network of other atrous rates or pool5a (same weight shapes) is then refused."""
    overrides = [o for o in overrides if o.startswith(_MODEL_KEYS)]
    # Inside a running Hydra app (train.py converting a .caffemodel given as pretrained weights)
    # Hydra is initialised already and a second initialisation would fail.
    if GlobalHydra.instance().is_initialized():
        cfg = hydra.compose("train", overrides)
    else:
        cfg = compose("train", overrides)
    with torch.device("meta"):
        return instantiate(cfg.model), OmegaConf.to_container(cfg.model, resolve=True)


def _classifier_keys(net: torch.nn.Module) -> set[str]:
    ids = {id(p) for p in net.classifier_parameters()}
    return {name for name, p in net.named_parameters() if id(p) in ids}


def _check_fits(state: dict, rec: Recognised, source: Path) -> dict:
    """Every key the file should fill is filled, with the right shape, and nothing else; returns
    the network's resolved model config."""
    net, model = build_target(rec.overrides)
    own = net.state_dict()
    expected = set(own) if rec.complete else set(own) - _classifier_keys(net)
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(v.shape)} (needs {tuple(own[k].shape)})"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = [
        f"{label}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
        for label, keys in (
            ("blob shape mismatch", shapes),
            ("not in the file", missing),
            ("no place in the network", unexpected),
        )
        if keys
    ]
    if problems:
        raise UserError(
            f"{source}: recognised {rec.description}, but its weights do not fit the network of "
            f"{' '.join(rec.overrides)}: " + "; ".join(problems)
        )
    return model


def convert(path: str | Path, drop_classifier: bool = False) -> dict:
    """The converted file's contents; raises UserError (nothing written) if any layer is off."""
    path = Path(path).expanduser()
    layers = read_caffemodel(path)
    try:
        rec, unplaced = recognise(layers, drop_classifier)
    except ValueError as err:
        raise UserError(f"{path}: {err}") from err
    if unplaced:
        listed = ", ".join(f"{lay.name} {tuple(lay.blobs[0].shape)}" for lay in unplaced[:8])
        more = f" and {len(unplaced) - 8} more" if len(unplaced) > 8 else ""
        raise UserError(
            f"{path}: recognised {rec.description}; could not place {len(unplaced)} layer(s): "
            f"{listed}{more}. The converter knows the released DeepLab v1/v2 VGG-16 and ResNet-101 "
            "files (docs/caffe.md, 'Converting the authors' Caffe models')"
        )
    state = to_state_dict(layers, rec)
    model = _check_fits(state, rec, path)
    return {
        "state_dict": state,
        "overrides": rec.overrides,
        "model": model,
        "complete": rec.complete,
        "source": {"file": path.name, "recognised": rec.description},
        "dropped": sorted(rec.dropped),
    }


def save(converted: dict, out: str | Path) -> None:
    """Write atomically: a temp file in the same folder, renamed once complete."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(out) as tmp:
        torch.save(converted, tmp)
