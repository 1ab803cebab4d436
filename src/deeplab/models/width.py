"""Channel widths under a width multiplier (narrow networks for tests and the CPU demo)."""

from deeplab.runtime.errors import UserError


def scale_width(channels: int, width_mult: float) -> int:
    """`channels * width_mult`, rounded, at least 1."""
    if width_mult <= 0:
        raise UserError(f"model.width_mult must be > 0 (got {width_mult}); 1.0 is full width")
    return max(1, round(channels * width_mult))
