"""Reading a file the user handed over, or a UserError that names it and the fix (design.md I9).

torch, numpy and PIL report a truncated or foreign file in their own words ("PytorchStreamReader
failed reading zip archive", "Cannot load file containing pickled data", "not a zip file") and
never say which file. `read_file` runs the reader and turns those errors into one message.
"""

import pickle
import re
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import yaml

from deeplab.runtime.errors import MissingFileError, UserError

T = TypeVar("T")

# What the readers raise for bytes they cannot parse (never for a bug in our own code, which
# would raise inside `read` after the bytes were parsed: keep `read` to the parsing itself).
READ_ERRORS = (
    OSError,  # includes PIL's UnidentifiedImageError, truncated-file errors
    EOFError,
    ValueError,  # numpy: pickled data / bad header; PIL: bad mode; JSON; undecodable text
    RuntimeError,  # torch: PytorchStreamReader failed ...
    SyntaxError,  # PIL: broken PNG chunks
    KeyError,  # zip archives missing a member
    IndexError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    zlib.error,
    yaml.YAMLError,  # config files (OmegaConf.load)
)


def first_sentence(err: BaseException) -> str:
    """The reader's own words, cut to their first sentence (torch's run on for five)."""
    text = str(err).strip().split("\n")[0].split(". ")[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def read_file(
    read: Callable[[Path], T], path: str | Path, what: str, fix: str, extra_errors: tuple = ()
) -> T:
    """`read(path)`; a missing path raises MissingFileError, an unreadable one UserError, both
    as "<what> <path> ...: <fix>". A UserError that `read` raises itself passes unchanged;
    `extra_errors` are more exception types that mean "unreadable" for this reader."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file: {fix}")
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist: {fix}")
    try:
        return read(path)
    except UserError:
        raise
    except (*READ_ERRORS, *extra_errors) as err:
        raise UserError(
            f"{what} {path} cannot be read ({first_sentence(err)}): the file is truncated, corrupt "
            f"or of another kind; {fix}"
        ) from err


def read_tensors(path: str | Path, what: str, fix: str, mmap: bool = False):
    """A torch file's tensors, numbers, strings and containers, or a UserError naming it.

    Read with torch's restricted unpickler (`weights_only=True`): a handed checkpoint or weights
    file cannot run code, and one that holds other Python objects is refused, never loaded with
    the check turned off. `mmap` leaves the tensors on disk (to look at a file's keys only); it
    applies to torch's zip format, older single-pickle files are read whole.
    """

    def load(p: Path):
        try:
            return torch.load(
                p, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(p)
            )
        except pickle.UnpicklingError as err:
            raise UserError(
                f"{what} {p} was refused: it holds Python objects other than tensors, numbers, "
                f"strings and containers ({_refused_part(err)}), which could run code when "
                f"loaded, so it is not read; {fix}"
            ) from None

    return read_file(load, path, what, fix)


def _refused_part(err: pickle.UnpicklingError) -> str:
    """What torch's restricted unpickler refused ("GLOBAL posix.system"), without its advice to
    load the file unrestricted."""
    found = re.search(r"(GLOBAL [\w.]+)|(Unsupported [^\n.]+)", str(err))
    return found.group(0) if found else "an object torch does not allow"
