"""How every entry point reports a user's mistake: the message alone, exit status 2 (design.md I9).

`@reports_user_errors` goes under `@hydra.main` (Hydra unwraps it to find the config path) or on
a `python -m` tool's `main`. A `UserError` prints `Error: <message>` on stderr and exits 2;
with HYDRA_FULL_ERROR=1 it is re-raised with its traceback. Any other exception is a bug and
keeps its traceback (Hydra prints it as usual).
"""

import functools
import os
import sys
from collections.abc import Callable

from deeplab.runtime.errors import UserError

EXIT_USER_ERROR = 2  # argparse's status for a bad command line; 1 stays "it crashed"


def full_error() -> bool:
    """Whether the user asked for tracebacks, with Hydra's own switch."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def reports_user_errors(fn: Callable) -> Callable:
    """Wrap `fn` so that a `UserError` ends the program with its message alone."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as err:
            if full_error():
                raise
            print(f"Error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper
