"""Dense CRF speed: milliseconds per image and peak memory, pydensecrf vs the torch port.

VOC size (500 x 375, 21 labels) and Cityscapes size (2048 x 1024, 19 labels), 10 mean-field
iterations, the released VGG-16 setting. The input is a real VOC val image (resized for the
Cityscapes size) with a coarse softmax made from its truth, since the lattice's size, and so the
time, depends on image content. Each (backend, size) runs in a fresh process: one warm-up, then
`--repeats` timed calls; medians of wall time and of the process's CPU time (the fair figure on a
shared machine) are reported, with the speed-up over pydensecrf in wall time. Peak memory: the
process's peak RSS growth on CPU (ru_maxrss; tracemalloc cannot see C++ or torch buffers),
torch.cuda.max_memory_allocated on GPU.
Also reports the share of pixels where torch's labels equal pydensecrf's. Runs on the GPU too
when one is present. Prints markdown and writes JSON:

    python experiments/bench_crf.py --out outputs/bench_crf.json
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

SIZES = {"voc": (375, 500, 21), "cityscapes": (1024, 2048, 19)}
VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/voc_sample/VOC2012"


def make_input(height: int, width: int, classes: int, seed: int = 0):
    """A real photo and a coarse, noisy softmax from its truth (VOC sample if present)."""
    names = sorted((VOC_SAMPLE / "JPEGImages").glob("*.jpg")) if VOC_SAMPLE.is_dir() else []
    if names:
        from PIL import Image

        image = np.array(Image.open(names[0]).convert("RGB"))
        mask = np.array(Image.open(VOC_SAMPLE / "SegmentationClassAug" / f"{names[0].stem}.png"))
    else:  # a smooth synthetic scene
        yy, xx = np.mgrid[0:375, 0:500]
        image = np.stack([xx * 255 // 500, yy * 255 // 375, (xx + yy) % 256], -1).astype(np.uint8)
        mask = ((xx - 250) ** 2 + (yy - 190) ** 2 < 100**2).astype(np.uint8)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST).astype(np.int64)
    mask = np.where(mask == 255, 0, mask) % classes
    g = torch.Generator().manual_seed(seed)
    one_hot = F.one_hot(torch.from_numpy(mask), classes).permute(2, 0, 1).float()[None]
    low = 4 * F.avg_pool2d(one_hot, 8, ceil_mode=True)
    low = low + torch.randn(low.shape, generator=g)
    up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
    return np.ascontiguousarray(image), torch.softmax(up[0], 0).numpy()


def measure(backend: str, device: str, size: str, repeats: int, threads: int) -> dict:
    """Runs in a fresh process so that its peak memory is its own."""
    from deeplab.crf import DenseCRF

    torch.set_num_threads(threads)
    image, probs = make_input(*SIZES[size])
    crf = DenseCRF(backend="pydensecrf" if backend == "pydensecrf" else "torch")
    cuda = device == "cuda"
    if cuda:
        image_in, probs_in = torch.from_numpy(image).cuda(), torch.from_numpy(probs).cuda()
    else:
        image_in, probs_in = image, probs
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = crf(image_in, probs_in)  # warm-up (CUDA context, kernels, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        out = crf(image_in, probs_in)
        if cuda:
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
        cpu_times.append(1000 * (time.process_time() - cpu_start))
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if cuda
        else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss) / 1024
    )
    labels = np.asarray(out.cpu() if cuda else out).argmax(0)
    return {
        "ms": statistics.median(times),
        "cpu_ms": statistics.median(cpu_times),
        "times_ms": times,
        "peak_mib": peak,
        "labels": labels,
    }


def run_isolated(*args) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(measure, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: fair on a shared machine)"
    )
    parser.add_argument("--out", default="outputs/bench_crf.json")
    args = parser.parse_args()

    backends = [("pydensecrf", "cpu"), ("torch", "cpu")]
    if torch.cuda.is_available():
        backends.append(("torch", "cuda"))
    rows = []
    for size in args.sizes:
        ref_labels = None
        for backend, device in backends:
            r = run_isolated(backend, device, size, args.repeats, args.threads)
            labels = r.pop("labels")
            ref_labels = labels if ref_labels is None else ref_labels
            h, w, c = SIZES[size]
            rows.append(
                {"size": f"{size} {w}x{h}, {c} labels", "backend": backend, "device": device,
                 "agree_with_pydensecrf": float((labels == ref_labels).mean()), **r}
            )  # fmt: skip
            print(f"{rows[-1]['size']:>30} {backend:>10} {device:>4}: {r['ms']:9.1f} ms")

    print(
        "\n| size | backend | device | ms / image | CPU ms / image | speed-up | peak MiB "
        "| same labels |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        ref = next(r for r in rows if r["size"] == row["size"] and r["backend"] == "pydensecrf")
        print(
            f"| {row['size']} | {row['backend']} | {row['device']} | {row['ms']:.0f} | "
            f"{row['cpu_ms']:.0f} | "
            f"{ref['ms'] / row['ms']:.2f}x | {row['peak_mib']:.0f} | "
            f"{100 * row['agree_with_pydensecrf']:.3f}% |"
        )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch_threads": args.threads,
        "load_avg_1min": os.getloadavg()[0],
        "gpu": gpu,
        "torch": torch.__version__,
    }
    print(f"\nmachine: {machine}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
