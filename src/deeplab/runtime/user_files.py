"""Reading a file the user handed over, or a UserError that names it and the fix (design.md I9).

torch, numpy and PIL report a truncated or foreign file in their own words ("PytorchStreamReader
failed reading zip archive", "Cannot load file containing pickled data", "not a zip file") and
never say which file. `read_file` runs the reader and turns those errors into one message.
"""

import pickle
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
