"""Training input pipeline throughput: images/s per worker on VOC-size images.

Times the whole train path (JPEG + PNG decode, mask check, random scale, pad, crop 321, flip,
normalize) in one process (= one DataLoader worker), then through DataLoaders with N workers.
Prints a markdown table and writes JSON:

    python experiments/bench_data.py --root ../shared/data/voc_sample --out outputs/bench_data.json
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from deeplab.data.datamodule import VOCDataModule


def per_worker(dataset, samples: int) -> float:
    """Samples per second of one process calling __getitem__ (what one worker delivers)."""
    dataset[0]  # warm up caches and lazy imports
    start = time.perf_counter()
    for i in range(samples):
        dataset[i % len(dataset)]
    return samples / (time.perf_counter() - start)


def through_loader(dm: VOCDataModule, workers: int, samples: int) -> float:
    """Images per second through a DataLoader with `workers` processes (after its start-up)."""
    dm.loader_args.update(num_workers=workers, persistent_workers=True)
    loader = dm.train_dataloader()  # one loader: its workers live across the sample's epochs
    seen, start = 0, None
    while seen < samples:
        for batch in loader:
            if start is None:  # the first batch includes worker start-up
                start = time.perf_counter()
                continue
            seen += len(batch["name"])
            if seen >= samples:
                break
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="../shared/data/voc_sample", help="a VOCdevkit folder")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--random-scale", default="uniform", choices=["uniform", "discrete", "none"]
    )
    parser.add_argument("--out", default="outputs/bench_data.json")
    args = parser.parse_args()

    torch.set_num_threads(1)
    dm = VOCDataModule(args.root, batch_size=10, random_scale=args.random_scale)
    dm.setup("fit")
    results = {
        "root": args.root,
        "train_images": len(dm.train_set),
        "crop_size": dm.crop_size,
        "random_scale": args.random_scale,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "per_worker_img_per_s": per_worker(dm.train_set, args.samples),
        "loader_img_per_s": {w: through_loader(dm, w, args.samples) for w in args.workers},
    }
    print("| measure | images/s |\n|---|---|")
    print(f"| one worker (in-process `__getitem__`) | {results['per_worker_img_per_s']:.1f} |")
    for w, rate in results["loader_img_per_s"].items():
        print(f"| DataLoader, {w} worker(s), batch 10 | {rate:.1f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
