"""Config values checked before anything is built (design.md I9): the rules of the values that no
component owns (data loading, trainer, optimizer, schedule, test-time protocol).

A bad value would otherwise surface far from its cause: `data.std=[0,0,0]` as a NaN training
loss, `data.crop_size=-5` inside albumentations, `tta.scales=[]` as a ZeroDivisionError.
`check_config(cfg)` checks every key of RULES that the config has (a key a config lacks, such as
`model.kernel_size` for FCN-8s or `optim` for predict, is skipped) and raises a UserError naming
the key, what it must be and a valid example. A value that a component owns (the atrous rates,
widths, MSC scales, the atrous mode, every CRF value) is refused by that component, with the
same message (`invalid_value`); start-up builds them (`deeplab.engine.pipeline.check_run_config`).
"""

from collections.abc import Callable
from numbers import Real
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from deeplab.runtime.config import hydra_value
from deeplab.runtime.errors import UserError

_ABSENT = object()


def _number(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and v == v  # NaN != NaN


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def positive(v: Any) -> bool:
    return _number(v) and v > 0


def non_negative(v: Any) -> bool:
    return _number(v) and v >= 0


def positive_int(v: Any) -> bool:
    return _int(v) and v > 0


def non_negative_int(v: Any) -> bool:
    return _int(v) and v >= 0


def optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def numbers(n: int | None, each: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A non-empty list (of exactly `n` when given) whose items all pass `each`."""
    return lambda v: (
        isinstance(v, list) and len(v) > 0 and (n is None or len(v) == n) and all(map(each, v))
    )


def one_of(*choices) -> Callable[[Any], bool]:
    return lambda v: v in choices


def fraction(v: Any) -> bool:
    """In [0, 1)."""
    return _number(v) and 0 <= v < 1


def scale_range(v: Any) -> bool:
    return numbers(2, positive)(v) and v[0] <= v[1]


def msc_scales(v: Any) -> bool:
    return numbers(None, positive)(v) and 1.0 in v


def invalid_value(key: str, value: Any, expected: str) -> UserError:
    """The one message of a value out of its range, for these rules and for the components that
    own theirs (the networks, MSC, the atrous mode): `key=value is invalid: it must be ...`."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    elif isinstance(value, tuple):
        value = list(value)
    return UserError(f"{key}={hydra_value(value)} is invalid: it must be {expected}.")


# key, check, what the value must be (with a valid example)
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("data.num_classes", positive_int, "a class count >= 1, e.g. data.num_classes=21"),
    (
        "data.mean",
        numbers(3, _number),
        "3 numbers (R, G, B), e.g. data.mean=[122.675,116.669,104.008]",
    ),
    (
        "data.std",
        numbers(3, positive),
        "3 numbers > 0 (inputs are divided by them), e.g. data.std=[1,1,1]",
    ),
    ("data.batch_size", positive_int, "an integer >= 1, e.g. data.batch_size=10"),
    ("data.val_batch_size", positive_int, "an integer >= 1, e.g. data.val_batch_size=1"),
    ("data.crop_size", positive_int, "a crop side in pixels >= 1, e.g. data.crop_size=321"),
    (
        "data.random_scale",
        one_of("uniform", "discrete", "none"),
        "uniform, discrete or none, e.g. data.random_scale=uniform",
    ),
    (
        "data.scale_range",
        scale_range,
        "[low, high] with 0 < low <= high, e.g. data.scale_range=[0.5,1.5]",
    ),
    (
        "data.scales",
        numbers(None, positive),
        "a non-empty list of factors > 0, e.g. data.scales=[0.5,1.0,1.5]",
    ),
    ("data.flip", one_of(True, False), "true or false, e.g. data.flip=true"),
    (
        "data.num_workers",
        non_negative_int,
        "an integer >= 0 (0: load in the main process), e.g. data.num_workers=4",
    ),
    (
        "data.limit_train",
        optional(positive_int),
        "null (all) or an integer >= 1, e.g. data.limit_train=100",
    ),
    (
        "data.limit_val",
        optional(positive_int),
        "null (all) or an integer >= 1, e.g. data.limit_val=100",
    ),
    (
        "data.max_pixels",
        optional(positive_int),
        "null (no limit) or an integer >= 1, e.g. data.max_pixels=100000000",
    ),
    ("data.num_train", positive_int, "an integer >= 1, e.g. data.num_train=240"),
    ("data.num_val", positive_int, "an integer >= 1, e.g. data.num_val=50"),
    ("data.image_size", positive_int, "an image side in pixels >= 1, e.g. data.image_size=128"),
    ("data.max_objects", positive_int, "an integer >= 1, e.g. data.max_objects=4"),
    ("model.kernel_size", positive_int, "an integer >= 1, e.g. model.kernel_size=3"),
    ("model.head_width", positive_int, "an integer >= 1, e.g. model.head_width=1024"),
    ("model.fc_width", positive_int, "an integer >= 1, e.g. model.fc_width=4096"),
    ("model.dropout", fraction, "a probability in [0, 1), e.g. model.dropout=0.5"),
    ("model.msc", one_of(True, False), "true or false, e.g. model.msc=true"),
    ("model.backbone_lr_mult", non_negative, "a factor >= 0, e.g. model.backbone_lr_mult=0.1"),
    ("optim.name", one_of("sgd", "adamw"), "sgd or adamw, e.g. optim.name=sgd"),
    ("optim.lr", positive, "a learning rate > 0, e.g. optim.lr=1e-3"),
    ("optim.momentum", fraction, "a value in [0, 1), e.g. optim.momentum=0.9"),
    ("optim.weight_decay", non_negative, "a value >= 0, e.g. optim.weight_decay=5e-4"),
    ("optim.classifier_lr_mult", positive, "a factor > 0, e.g. optim.classifier_lr_mult=10"),
    ("optim.crf_rnn_lr_mult", non_negative, "a factor >= 0, e.g. optim.crf_rnn_lr_mult=1"),
    (
        "loss.crf_rnn_aux_weight",
        non_negative,
        "a weight >= 0 (0: no loss on the network's own logits), e.g. loss.crf_rnn_aux_weight=0.5",
    ),
    (
        "loss.crf_rnn_loss",
        one_of("cross_entropy", "lovasz_softmax"),
        "cross_entropy or lovasz_softmax, e.g. loss.crf_rnn_loss=lovasz_softmax",
    ),
    ("schedule.power", positive, "an exponent > 0, e.g. schedule.power=0.9"),
    ("schedule.step_size", positive_int, "a step count >= 1, e.g. schedule.step_size=2000"),
    ("schedule.gamma", positive, "a factor > 0, e.g. schedule.gamma=0.1"),
    (
        "trainer.max_steps",
        positive_int,
        "an iteration count >= 1 (the LR schedule needs it), e.g. trainer.max_steps=20000",
    ),
    (
        "trainer.accumulate_grad_batches",
        positive_int,
        "an integer >= 1, e.g. trainer.accumulate_grad_batches=1",
    ),
    (
        "trainer.check_val_every_n_epoch",
        optional(positive_int),
        "an integer >= 1, e.g. trainer.check_val_every_n_epoch=5",
    ),
    (
        "trainer.log_every_n_steps",
        positive_int,
        "an integer >= 1, e.g. trainer.log_every_n_steps=10",
    ),
    (
        "trainer.gradient_clip_val",
        optional(positive),
        "null (no clipping) or a norm > 0, e.g. trainer.gradient_clip_val=2.0",
    ),
    (
        "tta.scales",
        numbers(None, positive),
        "a non-empty list of factors > 0, e.g. tta.scales=[1.0] or [0.5,0.75,1.0]",
    ),
    ("tta.flip", one_of(True, False), "true or false, e.g. tta.flip=true"),
    (
        "tta.tile",
        optional(positive_int),
        "null (whole image) or a tile side >= 1, e.g. tta.tile=513",
    ),
    ("tta.overlap", fraction, "a fraction in [0, 1), e.g. tta.overlap=0.333"),
    ("val_samples", non_negative_int, "an integer >= 0, e.g. val_samples=4"),
    ("crf_workers", positive_int, "a process count >= 1, e.g. crf_workers=2"),
    # Lightning replaces a seed outside 0..2**32-1 by 0 with a warning: say so instead.
    ("seed", lambda v: _int(v) and 0 <= v < 2**32, "an integer in [0, 2**32), e.g. seed=0"),
    ("speed.channels_last", one_of(True, False), "true or false"),
    ("speed.compile", one_of(True, False), "true or false"),
    ("limit", optional(positive_int), "null (all) or an integer >= 1, e.g. limit=100"),
    (
        "num_workers",
        optional(positive_int),
        "null (all cores) or an integer >= 1, e.g. num_workers=2",
    ),
    ("input_size", positive_int, "an image side in pixels >= 1, e.g. input_size=321"),
]


# Values a config leaves to the command line (`???`), with what to pass.
REQUIRED = {
    "ckpt_path": "ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt",
    "input": "input=<an image or a folder of images>",
    "probs_dir": "probs_dir=<the folder of python src/evaluate.py ... save_probs=<dir>>",
    "data.root": "data.root=<your folder with images/, masks/, classes.txt>",
}


def _unset(node, prefix: str = "") -> list[str]:
    """Dotted keys left at `???` in an unresolved config container."""
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in _unset(value, f"{prefix}{key}.")]
    return [prefix[:-1]] if node == "???" else []


def check_config(cfg: DictConfig) -> None:
    """Raise a UserError for a required value left unset, or the first value of RULES that
    `cfg` has and that is invalid."""
    unset = _unset(OmegaConf.to_container(cfg, resolve=False))
    missing = [key for key in unset if key in REQUIRED]
    try:  # other unset values matter only where this run uses them (Table 4's `coco_init`)
        OmegaConf.to_container(cfg, resolve=True)
    except InterpolationToMissingValueError as err:
        missing += [f"{key} (for {err.full_key})" for key in unset if key not in REQUIRED]
    if missing:
        examples = " ".join(REQUIRED.get(key, f"{key.split()[0]}=...") for key in missing)
        raise UserError(f"{', '.join(missing)} must be set: pass {examples} on the command line.")
    for key, check, expected in RULES:
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
        if value is _ABSENT:
            continue
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if not check(value):
            raise invalid_value(key, value, expected)
