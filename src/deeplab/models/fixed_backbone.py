"""Checks `model.backbone` for the network builders (FCN and RefineNet: one fixed backbone)."""

from collections.abc import Iterable, Mapping

from deeplab.runtime.errors import UserError


def refuse_weight_files(options: dict) -> None:
    """Drops an unset `pretrained`; a set one is refused: networks here never read files."""
    if options.pop("pretrained", None) is not None:
        raise UserError(
            "model.backbone.pretrained is read by the builders in deeplab.weights (the `_target_` "
            "of conf/model/*.yaml), not by deeplab.models: build through deeplab.weights"
        )


def fixed_backbone_options(
    backbone: Mapping, expected: str, model: str, allowed: Iterable[str] = ()
) -> dict:
    """The allowed keys of `backbone` besides its name, or a UserError naming the fix.

    conf/model/{model}.yaml selects `backbone: {expected}` itself; a `backbone=` override on the
    command line that picks another one is refused rather than silently ignored.
    """
    opts = dict(backbone)
    name = opts.pop("name", None)
    refuse_weight_files(opts)
    if name != expected:
        raise UserError(
            f"model={model} is built on {expected}, but model.backbone.name={name!r}: drop the "
            f"backbone= override or set backbone={expected}"
        )
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise UserError(
            f"model.backbone has unknown keys {unknown} for model={model}; allowed: name, "
            f"pretrained, {', '.join(sorted(allowed)) or '(nothing else)'}"
        )
    return opts
