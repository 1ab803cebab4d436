"""The command-line overrides that turn this run's `model` config into a checkpoint's.

A checkpoint records its resolved `model` config (`checkpoint["deeplab"]["model"]`). Comparing
it field by field catches networks that load but compute something else (other atrous rates:
same weight shapes, other results). The fix is phrased as a user would type it: when the
backbone or the model builder differ, a config group switch (`backbone=vgg16`, `model=largefov`)
comes first, since a field override alone cannot turn one group option into another
(`model.backbone.name=vgg16` keeps ResNet's `freeze_bn` key, which VGG refuses); then the fields
the switch leaves wrong.
"""

from pathlib import Path

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser

from deeplab.runtime.config import group_options, hydra_value, override_key
from deeplab.weights.handed_config import checked_overrides
from deeplab.weights.legacy_records import current_overrides

# Fields that never change what a trained network computes: weight files used only to
# initialise training, and the class count (checked on its own, with its own fix: the data set).
NOT_COMPARED = {"pretrained", "init_from", "num_classes"}
# Fields that change training but not an evaluation (eval mode: no dropout, frozen BN).
TRAINING_ONLY = {"dropout", "freeze_bn", "backbone_lr_mult", "learn_upsampling"}
# Fields that say which network a config builds (the rest scale it or wrap it).
NOT_ARCHITECTURE = NOT_COMPARED | TRAINING_ONLY | {"width_mult", "msc", "msc_scales", "backbone"}
IDENTITY = ("_target_", "name")  # which builder / backbone a config level describes


def differences(saved: dict, current: dict, training: bool, prefix: str = "model") -> list:
    """(dotted key, saved value, this run's value) of every compared field that differs;
    `training` (a resume) compares the training-only fields too. Only fields both configs have
    are compared: a field added to the configs after a checkpoint was written takes its default
    and must not refuse older checkpoints. When the builder (`_target_`) or the backbone `name`
    differs, the other fields of that level are not listed: they belong to another network and
    the group switch resets them."""
    skip = NOT_COMPARED | (set() if training else TRAINING_ONLY)
    keys = set(saved) & set(current)
    for identity in IDENTITY:
        if identity in keys and saved[identity] != current[identity]:
            keys = {identity} | {k for k in keys if isinstance(saved[k], dict)}
    out = []
    for key in sorted(keys):
        if key in skip:
            continue
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, training, f"{prefix}.{key}")
        elif a != b:
            out.append((f"{prefix}.{key}", a, b))
    return out


def _architecture_mismatches(config: dict, option: dict) -> int:
    keys = (set(config) | set(option)) - NOT_ARCHITECTURE
    return sum(config.get(k) != option.get(k) for k in keys)


def model_option(saved: dict, current: dict) -> tuple[str, dict] | None:
    """The `model=` option to switch to, with its defaults, or None when fields suffice.

    Switch when the builder differs, or when one option builds exactly the saved network and
    this run does not (a LargeFOV checkpoint evaluated with model=aspp_l: `model=largefov`).
    """
    same_builder = {
        name: cfg
        for name, cfg in group_options("model").items()
        if cfg.get("_target_") == saved.get("_target_")
    }
    if not same_builder:
        return None
    name = min(same_builder, key=lambda n: _architecture_mismatches(saved, same_builder[n]))
    exact = _architecture_mismatches(saved, same_builder[name]) == 0
    if saved.get("_target_") != current.get("_target_") or (
        exact and _architecture_mismatches(current, saved) > 0
    ):
        return name, same_builder[name]
    return None


def _fields(saved: dict, current: dict, defaults: dict | None, prefix: str, skip: str) -> list[str]:
    """`prefix.key=value` for every saved field that differs from this run's value or, after a
    group switch, from the new option's defaults (either may end up in the final config)."""
    out = []
    for key in sorted(saved):
        if key in NOT_COMPARED or key in IDENTITY or key == skip:  # the group switch's business
            continue
        value = saved[key]
        differs = key in current and current[key] != value
        if defaults is not None:
            differs = differs or defaults.get(key) != value
        if differs:
            out.append(f"{prefix}.{key}={hydra_value(value)}")
    return out


def fix_overrides(saved: dict, current: dict) -> list[str]:
    """Overrides that rebuild the saved network: group switches first, then fields."""
    out = []
    switch = model_option(saved, current)
    if switch:
        out.append(f"model={switch[0]}")
    out += _fields(saved, current, switch[1] if switch else None, "model", skip="backbone")
    saved_bb, current_bb = saved.get("backbone") or {}, current.get("backbone") or {}
    bb_defaults = None
    if saved_bb.get("name") != current_bb.get("name"):
        bb_defaults = group_options("backbone").get(saved_bb.get("name"), {})
        out.append(f"backbone={saved_bb.get('name')}")
    return out + _fields(saved_bb, current_bb, bb_defaults, "model.backbone", skip="name")


# --- the overrides a checkpoint carries, so that evaluate / predict need only ckpt_path --------

GROUPS = ("data", "backbone", "model", "crf", "crf_rnn")  # the groups that build what it holds
SKIPPED_LEAVES = {"_target_", "num_classes", "pretrained", "init_from"}  # set by group / data


def _typed(value) -> str:
    """A value as a Hydra override types it; strings quoted (paths may hold any character)."""
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return hydra_value(value)


def _leaves(node: dict, prefix: str) -> list[tuple[str, object]]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}.{key}")
        elif key not in SKIPPED_LEAVES:
            out.append((f"{prefix}.{key}", value))
    return out


def _choice(group: str, config: dict) -> str | None:
    """The option of `group` that builds `config` (by builder / backbone name)."""
    if group == "backbone":
        return (config.get("backbone") or {}).get("name")
    options = group_options(group)
    if group == "model":
        found = model_option(config, {})
        return found[0] if found else None
    matches = [n for n, o in options.items() if o.get("_target_") == config.get("_target_")]
    return matches[0] if matches else None


def run_overrides(
    model: dict,
    data: dict,
    choices: dict | None = None,
    crf: dict | None = None,
    crf_rnn: dict | None = None,
) -> list[str]:
    """Overrides that rebuild this run's network and data set from the defaults: the group
    options (Hydra's record when there is one), then every resolved value (`++`: added or set).
    `crf_rnn`: the own values of a CRF-RNN layer after the network, `crf` the CRF config it
    takes its kernel widths from. A checkpoint stores them; evaluate.py and predict.py put them
    before the command line's."""
    choices = choices or {}
    groups = {"data": data, "model": model, "backbone": model, "crf": crf, "crf_rnn": crf_rnn}
    out = []
    for group in GROUPS:
        if groups[group] is None:
            continue
        option = choices.get(group) or _choice(group, groups[group])
        if option:
            out.append(f"{group}={option}")
    leaves = _leaves(data, "data") + _leaves(model, "model") + _leaves(crf or {}, "crf")
    leaves += _leaves(crf_rnn or {}, "crf_rnn")
    return out + [f"++{key}={_typed(value)}" for key, value in leaves]


def saved_not_overridden(saved: list[str], given: list[str]) -> list[str]:
    """`saved` overrides (a checkpoint's), minus what the command line `given` decides itself: a
    group it switches (with that group's values) and every key it sets."""
    keys = {override_key(o) for o in given if "=" in o}
    dropped = set()
    for group in set(GROUPS) & keys:
        dropped.add(group)
        dropped.add("model.backbone" if group == "backbone" else group)
    kept = []
    for override in saved:
        key = override_key(override)
        if key in keys or key in dropped or any(key.startswith(f"{d}.") for d in dropped):
            continue
        kept.append(override)
    return kept


def saved_overrides(path: str) -> list[str]:
    """The overrides a checkpoint (its record's `overrides`) or a converted Caffe file carries,
    read against the allowlist of `handed_config` (a UserError names one it refuses); none for a
    file that does not read as either (the run then names its problem)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, truncated, unsafe: reported where the checkpoint is loaded
        return []
    if not isinstance(obj, dict):
        return []
    record = obj.get("deeplab") if "deeplab" in obj else obj
    if not isinstance(record, dict) or "overrides" not in record:
        return []
    return current_overrides(checked_overrides(record["overrides"], f"checkpoint {path}"))


# A checkpoint's run folder is the parent of its `checkpoints/` folder; a split folder inside the
# run is recorded relative to it (`++data.split_dir='splits'`), so a moved run still finds it.
SPLIT_DIR_KEY = "data.split_dir"


def recorded_split_dir(split_dir: str, run_dir: Path) -> str:
    """`split_dir` as a checkpoint records it: relative to `run_dir` when inside it."""
    path, run = Path(split_dir).resolve(), Path(run_dir).resolve()
    return str(path.relative_to(run)) if path.is_relative_to(run) else str(path)


def run_folder(checkpoint: Path) -> Path:
    """The run folder of a train.py checkpoint (`<run>/checkpoints/last.ckpt`)."""
    folder = checkpoint.resolve().parent
    return folder.parent if folder.name == "checkpoints" else folder


def with_run_split_dir(overrides: list[str], checkpoint: Path) -> list[str]:
    """The recorded overrides with a relative split folder made absolute, from the checkpoint's
    run folder."""
    out = []
    parser = OverridesParser.create()
    for override in overrides:
        if override_key(override) == SPLIT_DIR_KEY:
            value = parser.parse_override(override).value()
            if isinstance(value, str) and not Path(value).is_absolute():
                value = str(run_folder(checkpoint) / value)
                override = f"++{SPLIT_DIR_KEY}={_typed(value)}"
        out.append(override)
    return out


def with_checkpoint_overrides(argv: list[str]) -> list[str]:
    """A command line `[script, *args]` with the overrides of its `ckpt_path=` file put before
    its own (which win): `python src/evaluate.py ckpt_path=X` rebuilds X's network, data set,
    normalisation and test protocol with nothing retyped."""
    script, args = argv[0], argv[1:]
    given = [a for a in args if "=" in a and not a.startswith("-")]
    others = [a for a in args if a not in given]  # Hydra's flags (-m, --cfg job, ...)
    paths = [a.split("=", 1)[1] for a in given if override_key(a) == "ckpt_path" and "=" in a]
    if len(paths) != 1 or "," in paths[0]:  # a sweep over checkpoints: each job's own call
        return argv
    saved = with_run_split_dir(saved_overrides(paths[0]), Path(paths[0]))
    if not saved:
        return argv
    return [script, *others, *saved_not_overridden(saved, given), *given]
