"""Check that the docs print the figures `make demo` measures (`.ci/run` runs it after the demo).

    python experiments/check_demo_figures.py outputs/ci-demo/metrics.json README.md docs/training.md

The demo is seeded and deterministic on one machine, so its README row and its table in
docs/training.md must equal what the run wrote into metrics.json, to the digits they print:
val mIoU, val_crf mIoU, val and val_crf pixel accuracy. Exit 0 when every file agrees, 1 with one
line per figure that differs (the file, the figure, written and measured), 2 for a file that is
missing or holds no demo figures.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from deeplab.runtime.cli import reports_user_errors
from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_file

METRICS = ("val/mIoU", "val_crf/mIoU", "val/pixel_acc", "val_crf/pixel_acc")
NUMBER = r"(\d+(?:\.\d+)?)"
# The two places the demo's figures live: README's headline row, training.md's table row.
PATTERNS = (
    re.compile(
        rf"val mIoU \*\*{NUMBER}\*\*, \*\*{NUMBER}\*\* with the dense CRF; pixel accuracy "
        rf"{NUMBER} / {NUMBER}"
    ),
    re.compile(
        rf"\| `make demo` \| \*\*{NUMBER}\*\* \| \*\*{NUMBER}\*\* \| {NUMBER} / {NUMBER} \|"
    ),
)


def written_figures(text: str, where: str) -> list[str]:
    """The four demo figures a doc writes, as written (their digits set the rounding)."""
    found = [m.groups() for pattern in PATTERNS for m in pattern.finditer(text)]
    if len(found) != 1:
        raise UserError(
            f"{where} holds {len(found)} rows of demo figures, not 1: write them as "
            "`val mIoU **A**, **B** with the dense CRF; pixel accuracy C / D` (README) or "
            "`| `make demo` | **A** | **B** | C / D |` (docs/training.md)"
        )
    return list(found[0])


def differences(metrics: dict, text: str, where: str) -> list[str]:
    """One line per figure of `text` that is not the measured one rounded to its digits."""
    out = []
    for key, written in zip(METRICS, written_figures(text, where), strict=True):
        digits = len(written.partition(".")[2])
        measured = f"{metrics[key]:.{digits}f}"
        if measured != written:
            out.append(f"{where}: {key} is written {written}, make demo measured {measured}")
    return out


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("metrics", type=Path, help="the demo run's metrics.json")
    parser.add_argument("docs", type=Path, nargs="+", help="README.md, docs/training.md")
    args = parser.parse_args(argv)
    fix = "run `make demo` (its run folder holds metrics.json)"
    metrics = read_file(lambda p: json.loads(p.read_text()), args.metrics, "metrics file", fix)
    missing = [k for k in METRICS if not isinstance(metrics.get(k), int | float)]
    if missing:
        raise UserError(f"{args.metrics} has no {', '.join(missing)}: {fix}")
    found = []
    for doc in args.docs:
        text = read_file(Path.read_text, doc, "doc", "pass README.md and docs/training.md")
        found += differences(metrics, text, str(doc))
    for line in found:
        print(line, file=sys.stderr)
    if not found:
        figures = ", ".join(f"{k} {metrics[k]:.2f}" for k in METRICS)
        print(f"the demo figures in {len(args.docs)} files are the measured ones: {figures}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
