"""CLI: `python -m deeplab.convert IN.caffemodel OUT.pth [--drop-classifier]`.

Prints what the file was recognised as and the Hydra overrides that build its network and input
convention; pass them to src/train.py / evaluate.py / predict.py with the converted file.
"""

import argparse
import shlex
from pathlib import Path

from deeplab.runtime.cli import reports_user_errors
from deeplab.weights.caffe.converter import convert, save


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deeplab.convert", description=__doc__)
    parser.add_argument("caffemodel", type=Path, help="the authors' .caffemodel")
    parser.add_argument("output", type=Path, help="the converted file to write (.pth)")
    parser.add_argument(
        "--drop-classifier",
        action="store_true",
        help="keep the backbone (and VGG fc6/fc7) only, e.g. to start from the COCO init",
    )
    args = parser.parse_args(argv)
    converted = convert(args.caffemodel, args.drop_classifier)
    save(converted, args.output)
    kind = "network" if converted["complete"] else "initialisation (no classifier)"
    print(f"recognised: {converted['source']['recognised']}")
    print(f"dropped: {len(converted['dropped'])} layers (MSC copies / classifiers)")
    print(f"wrote {args.output}: {len(converted['state_dict'])} tensors, a {kind}")
    print("overrides:", " ".join(shlex.quote(o) for o in converted["overrides"]))


if __name__ == "__main__":
    main()
