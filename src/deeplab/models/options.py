"""Checks `model.backbone` for networks that are built on one fixed backbone (FCN, RefineNet)."""

from collections.abc import Iterable, Mapping

from deeplab.errors import UserError


def fixed_backbone_options(
    backbone: Mapping, expected: str, model: str, allowed: Iterable[str] = ()
) -> tuple[str | None, dict]:
    """(pretrained path, the other allowed keys) of `backbone`, or a ValueError naming the fix.

    conf/model/{model}.yaml selects `backbone: {expected}` itself; a `backbone=` override on the
    command line that picks another one is refused rather than silently ignored.
    """
    opts = dict(backbone)
    name, pretrained = opts.pop("name", None), opts.pop("pretrained", None)
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
    return pretrained, opts
