"""How every entry point reports a user's mistake: the message alone, exit status 2 (design.md I9).

`@reports_user_errors` goes under `@hydra.main` (Hydra unwraps it to find the config path) or on
a `python -m` tool's `main`. A `UserError` prints `Error: <message>` on stderr and exits 2;
with HYDRA_FULL_ERROR=1 it is re-raised with its traceback. Any other exception is a bug and
keeps its traceback (Hydra prints it as usual). In a multirun a failed job is recorded instead and
`FailedJobs` lists them when the sweep ends. Command-line mistakes Hydra reports in its own words
(an override it cannot lex, a misspelt key, an unknown option, `+key` for a misspelt key) get
the same one-message form: `check_command_line` in each entry script, `check_added_keys` in the
wrapper.
"""

import difflib
import functools
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError

EXIT_USER_ERROR = 2  # argparse's status for a bad command line; 1 stays "it crashed"


def full_error() -> bool:
    """Whether the user asked for tracebacks, with Hydra's own switch."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def reports_user_errors(fn: Callable) -> Callable:
    """Wrap `fn` so that a `UserError` ends the program with its message alone.

    In a Hydra multirun a failed job must not end the sweep (the exit used to stop it at the
    first bad value): its error is printed into its log, recorded, and the next job starts;
    `FailedJobs` lists them all when the sweep ends."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            if args and isinstance(args[0], DictConfig) and HydraConfig.initialized():
                check_added_keys(args[0])
            return fn(*args, **kwargs)
        except Exception as err:
            if in_multirun():
                record_failure(err)
                return None
            if not isinstance(err, UserError) or full_error():
                raise
            print(f"Error: {err}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def check_added_keys(cfg: DictConfig) -> None:
    """Refuse `+key=value` where `key` is a misspelt setting. Hydra answers a typo (`data.bach_size
    =4`) with "to append to your config use +data.bach_size=4"; followed, that advice adds a key
    that nothing reads and the run goes on with the old value. Keys with no near namesake (a
    Trainer argument, `+experiment=...` groups) are added as asked."""
    hydra = HydraConfig.get()
    for override in hydra.overrides.task:
        if not override.startswith("+") or override.startswith("++") or "=" not in override:
            continue
        key, value = override[1:].split("=", 1)
        if key in hydra.runtime.choices:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig):
            continue
        close = difflib.get_close_matches(leaf, [k for k in node if k != leaf], n=1, cutoff=0.8)
        if close:
            known = f"{parent}.{close[0]}" if parent else close[0]
            raise UserError(
                f"{override} adds a new key {key} that nothing reads (Hydra suggests '+' for any "
                f"unknown key); did you mean {known}? Pass {known}={value}"
            )


CONFIG_FLAGS = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd"}


def check_command_line(argv: list[str], config_name: str | None = None) -> None:
    """Exit 2 with one message when a command-line override does not parse, or (given the app's
    `config_name`) does not compose: a misspelt key (`data.bach_size=4`) or an unknown option
    (`model=largefvo`). Hydra reports both before any of the project's code runs, in its own
    words and with exit status 1. Entry scripts call this before their `hydra.main` function,
    with the overrides that app will see."""
    takes_value = {*CONFIG_FLAGS, "--cfg", "-c", "--package", "-p", "--info", "-i",
                   "--experimental-rerun"}  # fmt: skip
    parser = OverridesParser.create()
    previous, overrides = "", []
    for arg in argv:
        option_value = previous in takes_value and "=" not in arg
        previous = arg
        if arg.startswith("-") or option_value:
            continue
        try:
            parser.parse_overrides([arg])
        except OverrideParseException as err:
            if full_error():
                raise
            reason = str(err).splitlines()[0].split(": ")[0]
            exit_with(
                f"the override {arg!r} cannot be read ({reason}): quote a value that "
                "holds spaces, non-ASCII letters or brackets, e.g. \"key='a value'\" (the outer "
                "quotes are for the shell)"
            )
        overrides.append(arg)
    if config_name and not CONFIG_FLAGS & {a.split("=", 1)[0] for a in argv}:
        try:
            for trial in composition_trials(overrides):
                checked_compose(config_name, trial)
        except UserError as err:
            if full_error():
                raise
            exit_with(str(err))


def exit_with(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def composition_trials(overrides: list[str]) -> list[list[str]]:
    """Override lists that together hold every value a command line asks for: the plain ones,
    then each value of each sweep (`model=largefov,aspp_l`) with them. Sweeps Hydra expands only
    with its config loader (`glob(...)`) are left to Hydra."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    plain = [o.input_line for o in parsed if not o.is_sweep_override()]
    trials = [plain]
    for override in parsed:
        if override.is_sweep_override():
            try:
                values = list(override.sweep_string_iterator())
            except Exception:  # noqa: BLE001  (glob sweeps need Hydra's loader)
                continue
            key = override.get_key_element()
            trials += [[*plain, f"{key}={value}"] for value in values]
    return trials


def checked_compose(config_name: str, overrides: list[str]) -> DictConfig:
    """`deeplab.runtime.config.compose`, with Hydra's composition errors as a `UserError` of one
    line that keeps Hydra's hint and adds the nearest names."""
    try:
        return compose(config_name, overrides)
    except ConfigCompositionException as err:
        raise UserError(composition_error(err)) from err


def composition_error(err: ConfigCompositionException) -> str:
    """One line for Hydra's multi-line composition errors: the override, what is wrong, the
    nearest key or option names, and Hydra's own advice."""
    text = str(err)
    missing = re.search(r"Could not find '(.+)/([^/']+)'", text)
    if isinstance(err, MissingConfigException) and missing:
        group, option = missing.groups()
        listed = text.split("Available options in", 1)[-1].split("Config search path")[0]
        options = [line.strip() for line in listed.splitlines()[1:] if line.strip()]
        near = difflib.get_close_matches(option, options, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(f'{group}={o}' for o in near)}? " if near else ""
        return f"{group}={option}: no such option in {group}/; {hint}options: {', '.join(options)}"
    cause = err.__cause__
    overridden = re.search(r"Could not override '([^']+)'", text)
    if isinstance(cause, ConfigAttributeError | ConfigKeyError) and overridden:
        key = overridden.group(1)
        parent = getattr(cause, "parent_node", None)
        leaf = key.rpartition(".")[2]
        names = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        near = difflib.get_close_matches(leaf, names, n=3, cutoff=0.6)
        where = key.rpartition(".")[0]
        spelt = [f"{where}.{n}" if where else n for n in near]
        hint = f"did you mean {' or '.join(spelt)}? " if spelt else ""
        return (
            f"{key}: no such key in the config; {hint}(Hydra: to add a new key, which nothing "
            f"may read, use +{key}=...)"
        )
    lines = [line.strip() for line in f"{text}\n{cause or ''}".splitlines() if line.strip()]
    return "; ".join(lines)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# (job, its error's first line, whether it is a UserError) for each failed job of this sweep
FAILED_JOBS: list[tuple[str, str, bool]] = []


def record_failure(err: Exception) -> None:
    """Print a failed job's error (a bug with its traceback) and remember it for the summary."""
    user_error = isinstance(err, UserError)
    if user_error and not full_error():
        print(f"Error: {err}", file=sys.stderr, flush=True)
    else:
        traceback.print_exc()
    hydra = HydraConfig.get()
    job = f"#{hydra.job.num} ({' '.join(hydra.overrides.task)})"
    first_line = (str(err).splitlines() or [""])[0]
    FAILED_JOBS.append((job, f"{type(err).__name__}: {first_line}", user_error))


class FailedJobs(Callback):
    """Hydra callback: when a multirun ends, list the jobs that failed and exit non-zero (2 when
    all were user errors, 1 when one was a bug). Registered first in conf/hydra/default.yaml, so
    that it runs after the other callbacks' `on_multirun_end` (Hydra calls them in reverse)."""

    def __init__(self) -> None:
        self.jobs = 0

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        self.jobs += 1

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not FAILED_JOBS:
            return
        lines = [f"  {job}: {error}" for job, error, _ in FAILED_JOBS]
        print(
            f"Error: {len(FAILED_JOBS)} of {self.jobs} jobs failed (the others finished, see "
            f"{config.hydra.sweep.dir}):\n" + "\n".join(lines),
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_USER_ERROR if all(user for *_, user in FAILED_JOBS) else 1)
