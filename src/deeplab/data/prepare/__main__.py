"""CLI: `python -m deeplab.data.prepare DATASET --root data/` (see datasets.py for each step)."""

import argparse
from pathlib import Path

from deeplab.data.prepare.datasets import (
    prepare_cityscapes,
    prepare_context,
    prepare_person_part,
    prepare_sbd,
    prepare_voc,
)
from deeplab.runtime.cli import reports_user_errors

STEPS = {
    "voc": prepare_voc,
    "sbd": prepare_sbd,
    "context": prepare_context,
    "person_part": prepare_person_part,
    "cityscapes": prepare_cityscapes,
}


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeplab.data.prepare", description=__doc__)
    parser.add_argument("dataset", choices=sorted(STEPS))
    parser.add_argument("--root", type=Path, default=Path("data"), help="the data_dir folder")
    args = parser.parse_args(argv)
    STEPS[args.dataset](args.root)


if __name__ == "__main__":
    main()
