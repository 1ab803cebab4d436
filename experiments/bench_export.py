"""CPU inference speed of an exported network: torch (eager), TorchScript and onnxruntime.

Full-width networks with seeded random weights (speed does not depend on the values), exported
by `deeplab.export` from a checkpoint as train.py writes it; one image per call, the median of
`--runs` timed calls after two warm-up rounds, the runtimes called in turn; all of them use every
core the process may use.
Prints a markdown table and writes JSON:

    python experiments/bench_export.py --size 321 --runs 5 --out outputs/bench_export.json
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import hydra
import numpy as np
import onnxruntime
import torch
from omegaconf import OmegaConf

from deeplab.data.classes import VOC_CLASSES, voc_palette
from deeplab.export import export, exportable
from deeplab.runtime.config import compose
from deeplab.weights.checkpoint import describe

MODELS = {
    "DeepLab-LargeFOV (VGG-16)": ["model=largefov"],
    "DeepLab-ASPP-L (ResNet-101)": ["model=aspp_l", "backbone=resnet101"],
}


def checkpoint(overrides: list[str], path: Path) -> Path:
    """A 21-class checkpoint of the network, recorded as SegmentationModule records it."""
    cfg = compose("train", ["data=voc", *overrides])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model).eval()
    model = OmegaConf.to_container(cfg.model, resolve=True)
    meta = describe(net, 21, cfg.data.mean, cfg.data.std, model, VOC_CLASSES, voc_palette())
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "deeplab": meta}, path)
    return path


def median_seconds(runs: dict, repeats: int) -> dict:
    """Median seconds per call of each runner, called in turn (two warm-up rounds first), so
    that a change in the machine's load during the run affects every runtime alike."""
    times = {name: [] for name in runs}
    for round_ in range(repeats + 2):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def bench(ckpt: Path, folder: Path, size: int, repeats: int) -> dict:
    onnx_file, script_file = folder / "net.onnx", folder / "net.pt"
    export(ckpt, onnx_file, script_file)
    image = np.random.default_rng(0).uniform(0, 255, (1, 3, size, size)).astype(np.float32)
    tensor = torch.from_numpy(image)
    eager, _ = exportable(ckpt)
    scripted = torch.jit.load(str(script_file))
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    runs = {
        "torch_s": lambda: eager(tensor),
        "torchscript_s": lambda: scripted(tensor),
        "onnxruntime_s": lambda: session.run(None, {"image": image}),
    }
    with torch.no_grad():
        result = median_seconds(runs, repeats)
    return {**result, "onnx_mb": onnx_file.stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=321, help="input side (square image)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    results = {
        "size": args.size,
        "runs": args.runs,
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "onnxruntime": onnxruntime.__version__,
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides in MODELS.items():
            ckpt = checkpoint(overrides, Path(tmp) / "net.ckpt")
            results["models"][name] = bench(ckpt, Path(tmp), args.size, args.runs)
    print(f"{args.size}x{args.size}, batch 1, {results['cores']} cores, median of {args.runs}\n")
    print("| network | torch (s) | TorchScript (s) | onnxruntime (s) | ONNX file (MB) |")
    print("|---|---|---|---|---|")
    for name, r in results["models"].items():
        print(
            f"| {name} | {r['torch_s']:.3f} | {r['torchscript_s']:.3f} | "
            f"{r['onnxruntime_s']:.3f} | {r['onnx_mb']:.0f} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
