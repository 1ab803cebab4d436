"""Time `python -m deeplab.convert` on a full-size DeepLab v2 ResNet-101 caffemodel.

Writes the released layout (ResNet-101 + ASPP-L, 21 classes, random weights) into a temp folder,
then converts it with the CLI's code path and prints the file size and the wall time:

    python experiments/bench_convert.py            # one copy of the weights (~176 MB)
    python experiments/bench_convert.py --msc      # + the *_res075 / *_res05 copies (3x)
"""

import argparse
import tempfile
import time
from pathlib import Path

from deeplab.weights.caffe.converter import convert, save
from deeplab.weights.caffe.released_layouts import resnet101_layers, write_caffemodel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--msc", action="store_true", help="include the MSC scale copies")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = write_caffemodel(
            Path(tmp) / "train_iter_20000.caffemodel", resnet101_layers(msc=args.msc)
        )
        start = time.perf_counter()
        converted = convert(src)
        save(converted, Path(tmp) / "converted.pth")
        seconds = time.perf_counter() - start
        print(f"{src.name}: {src.stat().st_size / 1e6:.0f} MB, {converted['source']['recognised']}")
        print(f"convert + save: {seconds:.1f} s")


if __name__ == "__main__":
    main()
