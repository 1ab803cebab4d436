"""Write a file so that an interruption (killed job, full disk) never leaves half of it."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def written_atomically(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dst`, renamed to `dst` only once the block completes.

    A half-written `dst` would look done to a rerun that skips existing files; the temporary name
    (hidden, `.tmp`) is removed when the block fails."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
