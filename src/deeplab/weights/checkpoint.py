"""Loading weights safely: a checkpoint from another class count or architecture fails clearly."""

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser
from torch import nn

from deeplab.runtime.config import hydra_value
from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_file, read_tensors
from deeplab.weights.checkpoint_overrides import differences, fix_overrides
from deeplab.weights.conventions import converted_checkpoint, is_converted
from deeplab.weights.handed_config import check_finite, check_record
from deeplab.weights.legacy_records import current_record


def checkpoint_record(
    net: nn.Module,
    num_classes: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    model: dict | None = None,
    overrides: list[str] | None = None,
    class_names: Sequence[str] | None = None,
    palette: np.ndarray | None = None,
) -> dict:
    """What a checkpoint records about its run, to check against the one loading it: the network,
    class count, input normalization, the resolved `model` config (for override hints), the
    overrides that rebuild its network and data set (evaluate / predict apply them), and the
    class names and colours, so that an export (`deeplab.export`) needs nothing else."""
    meta: dict = {"network": type(net).__name__, "num_classes": num_classes}
    if class_names is not None and palette is not None:
        colours = np.asarray(palette)[: len(class_names)].tolist()
        meta["classes"] = {"names": list(class_names), "colours": colours}
    if mean is not None and std is not None:
        meta["normalization"] = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    if model is not None:
        meta["model"] = model
    if overrides is not None:
        meta["overrides"] = list(overrides)
    return meta


def _quoted(overrides: list[str]) -> str:
    return " ".join(f'"{o}"' for o in overrides)


def check_model_config(meta: dict | None, model: dict | None, source, training: bool) -> None:
    """Raise UserError if this run's `model` config differs from the one the checkpoint was
    trained with in a field that changes results (other atrous rates load into the same weight
    shapes and silently score worse). Older checkpoints without a recorded config pass."""
    saved = (meta or {}).get("model")
    if saved is None or model is None:
        return
    diffs = differences(saved, model, training)
    if not diffs:
        return
    listed = "; ".join(
        f"{key} {hydra_value(a)} (this run: {hydra_value(b)})" for key, a, b in diffs[:6]
    )
    raise UserError(
        f"checkpoint {source} was trained with another model config: {listed}. Rebuild the "
        f"network it was trained as: pass {_quoted(fix_overrides(saved, model))}."
    )


def check_normalization(meta: dict | None, mean, std, source) -> None:
    """Raise UserError if this run normalizes inputs differently from the training run: the
    network would still load and run, and silently score worse."""
    saved = (meta or {}).get("normalization")
    if saved is None:
        return
    if np.allclose(saved["mean"], mean) and np.allclose(saved["std"], std):
        return
    fix = [f"data.mean={hydra_value(saved['mean'])}", f"data.std={hydra_value(saved['std'])}"]
    raise UserError(
        f"checkpoint {source} was trained on inputs normalized with mean {saved['mean']} and std "
        f"{saved['std']}, but this run uses mean {list(mean)} and std {list(std)}: pass "
        f"{_quoted(fix)}."
    )


def check_class_list(meta: dict | None, names, palette, source) -> None:
    """Raise UserError if this run's class names or colours differ from those the checkpoint
    was trained with (a reordered classes.txt: same count, every mask and score misnamed)."""
    saved = (meta or {}).get("classes")
    if not saved:
        return
    colours = np.asarray(palette)[: len(names)].tolist()
    for what, recorded, now in (
        ("names", saved["names"], list(names)),
        ("colours", saved["colours"], colours),
    ):
        if list(recorded) != now:
            first = next(
                (i for i, (a, b) in enumerate(zip(recorded, now, strict=False)) if a != b),
                min(len(recorded), len(now)),
            )
            raise UserError(
                f"checkpoint {source} was trained with other class {what} than this run's data "
                f"set: class {first} is {_at(recorded, first)} in the checkpoint, "
                f"{_at(now, first)} now (classes.txt changed since training?): restore the "
                f"class list it was trained with: {', '.join(map(str, saved['names']))}"
            )


def _at(values: list, index: int) -> str:
    return repr(values[index]) if index < len(values) else "absent"


def check_crf_kernels(overrides: list[str] | None, crf: dict, source) -> None:
    """Raise UserError if this run's CRF config differs from the one a trained CRF-RNN layer
    was trained with (its kernel widths come from it: `crf=...` on the command line would
    silently replace them). `overrides`: the checkpoint's recorded ones (`++crf.<key>=...`);
    `crf`: this run's values of the fields to compare."""
    recorded = {}
    for override in overrides or []:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith("crf."):
            recorded[key[4:]] = OverridesParser.create().parse_override(override).value()
    changed = [k for k, v in recorded.items() if k in crf and crf[k] != v]
    if changed:
        listed = "; ".join(
            f"crf.{k} {hydra_value(recorded[k])} (this run: {hydra_value(crf[k])})" for k in changed
        )
        raise UserError(
            f"checkpoint {source} holds a CRF-RNN layer trained with other CRF kernels: "
            f"{listed}. Leave crf= and crf.* out (the trained kernels apply); a post-hoc CRF "
            "on the network alone is crf_eval.py's job"
        )


def check_classes(meta: dict | None, num_classes: int, source) -> None:
    """Raise UserError if the checkpoint was trained for another class count."""
    if meta and meta.get("num_classes") != num_classes:
        converted = "; pass:" in str(meta.get("network"))  # conventions.converted_checkpoint
        start = f"init=caffe init.path={source}" if converted else "an init=... option"
        raise UserError(
            f"checkpoint {source} was trained for {meta['num_classes']} classes, but this run's "
            f"data set has {num_classes}: use it with a data set of {meta['num_classes']} classes "
            f"(the one it was trained on), or train for this data set with train.py from "
            f"{start}."
        )


def check_compatible(
    state_dict: dict,
    net: nn.Module,
    meta: dict | None,
    num_classes: int,
    source,
    model: dict | None = None,
) -> None:
    """Raise UserError naming the checkpoint and the fix if `state_dict` does not fit `net`.

    `state_dict` holds the network's own keys (no `net.` prefix); `meta` is `checkpoint_record()` of
    the saving run; `model` is this run's resolved model config, compared with the saved one to
    print the overrides that rebuild the trained network.
    """
    check_classes(meta, num_classes, source)
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
        hints = fix_overrides(meta["model"], model) if meta and "model" in meta and model else []
        if hints:
            fix += ": " + _quoted(hints)
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
    checkpoint: dict,
    net: nn.Module,
    num_classes: int,
    mean,
    std,
    model: dict | None,
    source,
    training: bool = False,
) -> dict:
    """The network's weights from a loaded checkpoint, once they fit `net` and this run (class
    count, model config, input normalization); evaluation, prediction and resume (`training`:
    training-only fields such as dropout must match too) all load through here."""
    if not isinstance(checkpoint, dict):
        raise UserError(
            f"{source} holds a {type(checkpoint).__name__}, not a checkpoint: set ckpt_path to a "
            ".ckpt written by train.py"
        )
    state, meta = network_state(checkpoint), current_record(checkpoint.get("deeplab"))
    check_record(checkpoint if is_converted(checkpoint) else meta, source)
    if is_converted(checkpoint):  # python -m deeplab.convert output (docs/caffe.md)
        state, meta = converted_checkpoint(checkpoint, source)
    check_finite(state, source)
    check_classes(meta, num_classes, source)
    check_model_config(meta, model, source, training)
    check_compatible(state, net, meta, num_classes, source, model)
    check_normalization(meta, mean, std, source)
    return state


def read_checkpoint(path: str | Path, key: str = "ckpt_path") -> dict:
    """A checkpoint file's contents, or a UserError naming the file (missing, truncated, not a
    checkpoint) and `key`, the setting that points at it."""
    return read_tensors(path, "checkpoint", _fix(key))


def read_record(path: str | Path, key: str = "ckpt_path") -> dict | None:
    """A train.py checkpoint's `checkpoint_record` (tensors left on disk), checked as a handed
    file's; None for a file without one (converted Caffe files, bare state dicts)."""
    checkpoint = read_tensors(path, "checkpoint", _fix(key), mmap=True)
    record = checkpoint.get("deeplab") if isinstance(checkpoint, dict) else None
    if not isinstance(record, dict):
        return None
    check_record(record, path)
    return record


def check_readable(path: str | Path, key: str = "ckpt_path") -> None:
    """Raise UserError unless `path` is a whole checkpoint archive (torch writes zip files; a
    truncated copy has lost its central directory) of tensors and plain values only, without
    loading them whole: Lightning reads it later, in torch's words. Its record is read as a
    handed file's (`handed_config`) and its weights must be finite."""
    read_file(lambda p: zipfile.ZipFile(p).close(), path, "checkpoint", _fix(key))
    checkpoint = read_tensors(path, "checkpoint", _fix(key), mmap=True)
    if isinstance(checkpoint, dict):
        check_record(checkpoint.get("deeplab"), path)
        check_finite(network_state(checkpoint), path)


def _fix(key: str) -> str:
    return f"set {key} to a .ckpt file written by train.py (checkpoints/last.ckpt or best-*.ckpt)"


def load_network(
    net: nn.Module,
    path: str | Path,
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    model: dict | None = None,
) -> nn.Module:
    """Load a training checkpoint's weights into `net` after `checked_state`'s checks."""
    checkpoint = read_checkpoint(path)
    net.load_state_dict(checked_state(checkpoint, net, num_classes, mean, std, model, path))
    return net
