"""What a run may take from a file it was handed: a checkpoint's record or a converted Caffe file.

Such a file records the overrides that rebuild its run (`checkpoint["deeplab"]["overrides"]`,
`converted["overrides"]`) and its resolved `model` config. Both are data: they are read here,
against an allowlist, before anything applies them. A file may switch the config groups that
build what it holds to options the project ships, and set the fields of the data set, the
network and the test protocol to plain values (numbers, strings, booleans, null, lists of them).
It may never name code (`_target_`, `_args_`, Hydra callbacks), touch `hydra.*`, choose where a
run writes or which weight files it reads, or hold an interpolation (`${...}`, which could read
the environment or call a resolver). Anything else is refused with one message naming the file
and the key. evaluate, predict, export, resume and `init_from_checkpoint` all read through here.
"""

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException

from deeplab.runtime.config import group_option_names, group_options
from deeplab.runtime.errors import UserError

# --- the allowlist: extend it here when a config group joins what a checkpoint rebuilds ---------

# Config groups a file may switch (to an option that exists in conf/<group>/).
FILE_GROUPS = ("data", "backbone", "model", "crf", "crf_rnn")
# Keys a file may set: the data set, the network (old checkpoints keep their `model.crf_rnn*`
# keys there), the CRF a CRF-RNN layer takes its kernels from, and the test protocol.
FILE_KEY_PREFIXES = ("data.", "model.", "crf.", "crf_rnn.", "tta.")
# Keys under those prefixes that a file may still not set: files it would read or write.
FILE_REFUSED_KEYS = ("model.backbone.pretrained", "model.init_from")
PLAIN_TYPES = (str, int, float, bool, type(None))

FIX = (
    "a checkpoint or converted file may only set the data set, network and test protocol "
    "(docs/faults.md 'Threat model'); do not use this file, or retrain / convert it again"
)


def _refuse(source, key: str, why: str) -> UserError:
    return UserError(f"{source} records {key!r}, which {why}: {FIX}")


def _plain(value) -> bool:
    """A number, string, boolean, null or a list of them, without an interpolation."""
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, str):
        return "${" not in value
    return isinstance(value, PLAIN_TYPES)


def checked_overrides(overrides, source) -> list[str]:
    """`overrides` as a handed file records them, once each is one the allowlist takes; else a
    UserError naming `source` and the first override refused."""
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise UserError(f"{source} records overrides that are not a list of strings: {FIX}")
    parser = OverridesParser.create()
    for text in overrides:
        try:
            override = parser.parse_override(text)
        except HydraException:
            raise _refuse(source, text, "is not a Hydra override") from None
        key = override.key_or_group
        if override.package is not None or override.type == OverrideType.DEL:
            raise _refuse(source, text, "moves or deletes a config node")
        if override.is_sweep_override():
            raise _refuse(source, text, "is a sweep, not a value")
        value = override.value()
        if "." not in key:  # a group switch: `data=synthetic`
            if key not in FILE_GROUPS:
                raise _refuse(source, key, "is not a setting a file may choose")
            if not isinstance(value, str) or value not in group_option_names(key):
                raise _refuse(source, text, f"is not one of the project's {key} options")
            continue
        check_key(key, source)
        if not _plain(value):
            raise _refuse(source, key, "has a value that is not a plain number, string or list")
    return list(overrides)


def check_key(key: str, source, reads_files: bool = False) -> None:
    """Refuse a dotted key a file may not set (see the module doc); `reads_files`: the weight
    file keys are let through (a recorded model config keeps them; the builders drop them)."""
    parts = key.split(".")
    if any(p.startswith("_") or p == "hydra" or not p for p in parts):
        raise _refuse(source, key, "names code or Hydra's own settings")
    if not key.startswith(FILE_KEY_PREFIXES):
        raise _refuse(source, key, "is not a setting a file may choose")
    if not reads_files and key in FILE_REFUSED_KEYS:
        raise _refuse(source, key, "chooses a file to read, which only the command line may")


def project_builders() -> dict[str, str]:
    """{builder `_target_` string, as the project's model options (conf/model/*.yaml) name it:
    itself}: a recorded builder is looked up here and the project's own string is used."""
    options = group_options("model").values()
    return {o["_target_"]: o["_target_"] for o in options if "_target_" in o}


def checked_model_record(model, source) -> dict:
    """A recorded resolved `model` config, as data: its builder (`_target_`) one of the
    project's model options, every other field a plain value under a plain key. The network is
    then built from the project's option (`project_model_config`), never from the file."""
    if not isinstance(model, dict):
        raise UserError(f"{source} records a model config that is not a mapping: {FIX}")
    target = model.get("_target_")
    if not isinstance(target, str) or target not in project_builders():
        raise _refuse(source, "model._target_", "is not a builder of the project's model options")

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            dotted = f"{prefix}.{key}"
            if dotted == "model._target_":
                continue
            if not isinstance(key, str):
                raise _refuse(source, str(dotted), "is not a plain key")
            if isinstance(value, dict):
                walk(value, dotted)
                continue
            check_key(dotted, source, reads_files=True)
            if not _plain(value):
                raise _refuse(source, dotted, "has a value that is not a plain number or string")

    walk(model, "model")
    return model


def project_model_config(model: dict, source) -> dict:
    """The model config to build a handed file's network from: its checked fields under the
    builder of the project's own model option (`conf/model/<option>.yaml`) that it names."""
    checked_model_record(model, source)
    return {**model, "_target_": project_builders()[model["_target_"]]}


def check_finite(state: dict, source) -> None:
    """Refuse weights holding NaN or Inf: a network runs with them and writes all-background
    masks (or NaN losses) without a word."""
    for key, tensor in state.items():
        floating = isinstance(tensor, torch.Tensor) and tensor.is_floating_point()
        if floating and not bool(torch.isfinite(tensor).all()):
            raise UserError(
                f"{source} holds non-finite values (NaN or Inf) in {key}: the weights are "
                "broken (a diverged training or a damaged file); use an earlier checkpoint"
            )


def check_record(record, source) -> None:
    """Check what a checkpoint's record (`checkpoint_record`) or a converted file carries
    beside its weights: its overrides and its model config."""
    if not isinstance(record, dict):
        return
    if "overrides" in record:
        checked_overrides(record["overrides"], source)
    if "model" in record:
        checked_model_record(record["model"], source)
