"""The project's own exception types for a user's mistake (design.md I9).

A `UserError` message names the file or config key and the fix; the command-line entry points
print it alone and exit non-zero (a traceback only with HYDRA_FULL_ERROR=1). Any other exception
is a bug and keeps its traceback. Subclassing ValueError / FileNotFoundError keeps callers that
catch those working.
"""


class UserError(ValueError):
    """A bad config value, file or input: the message says which and how to fix it."""


class MissingFileError(UserError, FileNotFoundError):
    """A path the user gave (data root, checkpoint, weights, image) does not exist."""


class UnwritableError(UserError, OSError):
    """A folder or disk refused a write (read-only, no permission, full, quota)."""
