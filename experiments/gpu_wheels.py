"""Wheels of what experiments/gpu_report.py needs and the GPU machine's image lacks.

The image has Python 3.12, torch, lightning, torchmetrics, numpy, OpenCV and Pillow, reaches no
package registry, and lacks Hydra and OmegaConf (the report composes its networks from conf/ as
train.py does). This writes pure-Python wheels of those (the versions installed here) into
`.whl/`, to be carried to that machine (`.whl/` is git-ignored) and installed there offline:

    python experiments/gpu_wheels.py                     # here, with the registry
    python -m pip install --no-index --no-deps --find-links .whl --target .whl/site \
        hydra-core omegaconf antlr4-python3-runtime   # PyYAML, packaging: in the image
    PYTHONPATH=src:.whl/site python experiments/gpu_report.py --out gpu_report.md

albumentations, wandb and pydensecrf are not needed: the report runs without them
(tests/test_gpu_report.py runs its dry run with them hidden).
"""

import argparse
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

PACKAGES = ("hydra-core", "omegaconf", "antlr4-python3-runtime")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".whl"), help="folder for the wheels")
    args = parser.parse_args()
    pins = [f"{name}=={version(name)}" for name in PACKAGES]
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(args.out)]
    subprocess.run([*command, *pins], check=True)
    wheels = sorted(args.out.glob("*.whl"))
    impure = [w.name for w in wheels if not w.name.endswith("-none-any.whl")]
    if impure:
        sys.exit(f"not pure-Python, would not install on the GPU image: {impure}")
    size = sum(w.stat().st_size for w in wheels) / 2**20
    print(
        f"{len(wheels)} wheels, {size:.1f} MiB in {args.out}: " + ", ".join(w.name for w in wheels)
    )


if __name__ == "__main__":
    main()
