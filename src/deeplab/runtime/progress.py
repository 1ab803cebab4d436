"""One progress display for every long job: downloads, extraction, conversion, CRF search, folders.

In a terminal it is a live `rich` bar (the library Lightning's bar uses): done / total, rate, time
left and an info field (e.g. the best score so far). Anywhere else (CI, SLURM logs, a pipe) a live
bar would fill the log with control characters, so it writes one plain line each time another 10 %
is done or `interval` seconds have passed, and a last line at the end. Output goes to stderr, so
stdout keeps only results (`python -m deeplab.crf.search DIR > table.md`). `FORCE_COLOR=1` forces
the live bar (rich's rule).
"""

import math
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta

from rich import progress as rp
from rich.console import Console
from rich.filesize import decimal
from rich.text import Text

LOG_STEP = 0.1  # a plain line each time this fraction of the total is done


class Progress:
    """`with Progress("converting SBD", total=n, unit="files") as bar: ... bar.advance()`.

    `unit="bytes"` shows sizes (kB, MB, ...) and a transfer rate. `completed` starts the count above
    zero (a resumed download or search); rate and time left count only the work done in this run.
    """

    def __init__(
        self,
        description: str,
        total: float | None,
        unit: str = "items",
        completed: float = 0,
        interval: float = 30.0,
        console: Console | None = None,
    ):
        self.description, self.total, self.unit, self.interval = description, total, unit, interval
        self.completed = self._start = completed
        self.info = ""
        self.console = console or Console(stderr=True)
        self._bar: rp.Progress | None = None

    def __enter__(self) -> "Progress":
        self._t0 = self._last_time = time.monotonic()
        self._last_logged = self.completed
        if self.console.is_terminal:
            # Lines printed meanwhile go above the bar, but results piped to a file stay there.
            self._bar = rp.Progress(
                *self._columns(), console=self.console, redirect_stdout=sys.stdout.isatty()
            )
            self._bar.start()
            self._task = self._bar.add_task(
                self.description, total=self.total, completed=self.completed, info=""
            )
        return self

    def advance(self, n: float = 1, info: str | None = None) -> None:
        self.completed += n
        if info is not None:
            self.info = info
        if self._bar is not None:
            self._bar.update(self._task, advance=n, info=self.info)
            return
        now = time.monotonic()
        step = LOG_STEP * self.total if self.total else math.inf
        if self.completed - self._last_logged >= step or now - self._last_time >= self.interval:
            self._log(now)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.completed != self._last_logged:
            self._log(time.monotonic())  # where it ended, also when it stopped on an error

    def line(self, now: float) -> str:
        """The plain form: `converting: 40/100 files (40%), 2.1 files/s, 0:00:19 elapsed, ...`."""
        elapsed = now - self._t0
        rate = (self.completed - self._start) / elapsed if elapsed > 0 else 0.0
        parts = [f"{self._amount(self.completed)}/{self._amount(self.total)}"]
        if self.unit != "bytes":
            parts[0] += f" {self.unit}"
        if self.total:
            parts[0] += f" ({100 * self.completed / self.total:.0f}%)"
        parts.append(self._rate(rate))
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and rate > 0:
            parts.append(f"{_clock((self.total - self.completed) / rate)} left")
        if self.info:
            parts.append(self.info)
        return f"{self.description}: " + ", ".join(parts)

    def _log(self, now: float) -> None:
        self.console.file.write(self.line(now) + "\n")
        self.console.file.flush()
        self._last_logged, self._last_time = self.completed, now

    def _amount(self, n: float | None) -> str:
        if n is None:
            return "?"
        return decimal(int(n)) if self.unit == "bytes" else f"{n:g}"

    def _rate(self, rate: float) -> str:
        if self.unit == "bytes":
            return f"{decimal(int(rate))}/s"
        return f"{rate:.2f} {self.unit}/s"

    def _columns(self) -> list:
        if self.unit == "bytes":
            counts = [rp.DownloadColumn(), rp.TransferSpeedColumn()]
        else:
            counts = [rp.MofNCompleteColumn(), rp.TextColumn(self.unit), _Rate(self.unit)]
        return [
            rp.TextColumn("{task.description}"),
            rp.BarColumn(),
            *counts,
            rp.TimeRemainingColumn(),
            rp.TextColumn("{task.fields[info]}"),
        ]


class _Rate(rp.ProgressColumn):
    """Items per second (rich has a rate column for bytes only)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: rp.Task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else "")


def track(
    items: Iterable, description: str, total: int | None = None, unit: str = "items", **kwargs
) -> Iterator:
    """Yield `items`, advancing one Progress per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with Progress(description, total, unit, **kwargs) as bar:
        for item in items:
            yield item
            bar.advance()


def _clock(seconds: float) -> str:
    return str(timedelta(seconds=round(seconds)))
