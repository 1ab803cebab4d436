"""deeplab.runtime.progress: a live bar in a terminal, plain lines (no control characters) in
a log."""

import io

from rich.console import Console

from deeplab.runtime.progress import Progress, track


def log_console() -> Console:
    return Console(file=io.StringIO())  # not a terminal, as in CI or a SLURM log


def test_log_form_is_plain_lines_every_tenth_and_at_the_end():
    console = log_console()
    with Progress("converting SBD", 95, "files", console=console) as bar:
        for i in range(95):
            bar.advance(info=f"last {i}")
    text = console.file.getvalue()
    assert "\x1b" not in text and "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10  # 9.5 files per line: at 10, 20, ..., 90, then the end
    assert lines[0].startswith("converting SBD: 10/95 files (11%), ")
    assert " files/s, " in lines[0] and " elapsed, " in lines[0] and " left, last 9" in lines[0]
    assert lines[-1].startswith("converting SBD: 95/95 files (100%)")
    assert lines[-1].endswith("0:00:00 left, last 94")


def test_log_form_every_interval_without_a_total_and_in_bytes():
    console = log_console()
    with Progress(
        "downloading x.tar", None, "bytes", completed=1000, interval=0, console=console
    ) as bar:
        bar.advance(1500)
        bar.advance(1500)
    lines = console.file.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "downloading x.tar: 2.5 kB/?",
        "downloading x.tar: 4.0 kB/?",
    ]
    assert "/s" in lines[0] and "left" not in lines[0]  # no total: no time left


def test_track_logs_once_at_the_end_when_quiet_and_stops_where_an_error_stops_it():
    console = log_console()
    try:
        for i in track(range(50), "images", unit="images", interval=1e9, console=console):
            if i == 3:
                raise KeyError(i)
    except KeyError:
        pass
    assert console.file.getvalue().splitlines()[-1].startswith("images: 3/50 images (6%)")


def test_terminal_form_is_a_live_bar():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    for _ in track(range(3), "predicting", unit="images", console=console):
        pass
    text = console.file.getvalue()
    assert "\x1b[" in text and "3/3" in text and "predicting" in text
