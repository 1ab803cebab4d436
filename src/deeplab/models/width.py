"""Channel widths under a width multiplier (narrow networks for tests and the CPU demo)."""

from deeplab.runtime.config_checks import invalid_value, positive


def scale_width(channels: int, width_mult: float) -> int:
    """`channels * width_mult`, rounded, at least 1."""
    if not positive(width_mult):
        expected = "a factor > 0 (1.0: full width), e.g. model.width_mult=0.25"
        raise invalid_value("model.width_mult", width_mult, expected)
    return max(1, round(channels * width_mult))
