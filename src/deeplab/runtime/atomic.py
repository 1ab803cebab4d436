"""Write a file so that an interruption (killed job, full disk) never leaves half of it, and say
which folder refused a write in one message."""

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deeplab.runtime.errors import UnwritableError

# A disk or folder that refuses writes (full, quota, read-only, no permission, file too large)
REFUSED_WRITES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# The process's file-creation mask, which a plain open() applies (read once: setting is the
# only way to read it).
UMASK = os.umask(0)
os.umask(UMASK)


@contextmanager
def written_atomically(dst: Path) -> Iterator[Path]:
    """Yield a temporary path beside `dst`, renamed to `dst` only once the block completes.

    A half-written `dst` would look done to a rerun that skips existing files; the temporary name
    (hidden, `.tmp`) is removed when the block fails, and what was written before stays. Each
    writer gets a temporary name of its own (two processes writing one `dst`, such as three
    predicts into one output_dir, never write into each other's). A full disk or a folder that
    refuses writes ends in a UserError naming `dst`."""
    dst = Path(dst)
    tmp = None
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)  # the temporary name is made beside dst
        handle, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(handle)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would stay on the renamed file
        yield tmp
        os.replace(tmp, dst)
    except OSError as err:
        if err.errno not in REFUSED_WRITES:
            raise
        raise UnwritableError(
            f"could not write {dst} ({err.strerror or err}): free space on that disk or write "
            "to another folder; the files written before it are kept"
        ) from err
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def check_writable(folder: str | Path, key: str) -> Path:
    """Create `folder` if needed and write a probe file in it, before any work: a read-only or
    full disk found after an hour of computing would lose that hour. `key` names the setting."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-") as probe:
            probe.write(b"x")
            probe.flush()
    except OSError as err:
        raise UnwritableError(
            f"{key}={folder} cannot be written ({err.strerror or err}): pick a writable folder "
            "with free space"
        ) from None
    return folder
