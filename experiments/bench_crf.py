"""Dense CRF speed: pydensecrf against the torch port, timed side by side in one run.

VOC size (500 x 375, 21 labels) and Cityscapes size (2048 x 1024, 19 labels), 10 mean-field
iterations, the released VGG-16 setting (`crf=deeplab_vgg16`: per-pixel normalisation). The input
is a real VOC val image (resized for the Cityscapes size) with a coarse softmax made from its
truth, since the lattice's size, and so the time, depends on image content.

The machine is shared, so the two backends are timed interleaved (pydensecrf, torch, pydensecrf,
...) in the same process, each `--repeats` times after a warm-up, and the minimum is kept; the
ratio of the two is the figure to read. Both wall time and the process's CPU time are reported.
Per torch thread count (`--threads`, default 1 and 2) one fresh process runs; pydensecrf is
single-threaded. Then a whole-split row: `--images` VOC images refined by pydensecrf over 2
worker processes (`refine_many`) against torch with 2 threads, in wall time. Also reports the
share of pixels where torch's labels equal pydensecrf's. Adds a CUDA row when a GPU is present.
Prints markdown and writes JSON:

    python experiments/bench_crf.py --out outputs/bench_crf.json
"""

import argparse
import json
import multiprocessing as mp
import os
import platform
from pathlib import Path

import cv2
import numpy as np
import timing
import torch
import torch.nn.functional as F

SIZES = {"voc": (375, 500, 21), "cityscapes": (1024, 2048, 19)}
VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/voc_sample/VOC2012"
SETTING = dict(normalization="per_pixel")  # the rest: DenseCRF's defaults, the VGG-16 setting


def make_input(height: int, width: int, classes: int, seed: int = 0, index: int = 0):
    """A real photo and a coarse, noisy softmax from its truth (VOC sample if present)."""
    names = sorted((VOC_SAMPLE / "JPEGImages").glob("*.jpg")) if VOC_SAMPLE.is_dir() else []
    if names:
        from deeplab.data.dataset import read_mask
        from deeplab.data.images import read_rgb

        name = names[index % len(names)]
        image = read_rgb(name)
        mask = read_mask(VOC_SAMPLE / "SegmentationClassAug" / f"{name.stem}.png")
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


def side_by_side(size: str, repeats: int, threads: int, device: str) -> dict:
    """One image, both backends interleaved; runs in a fresh process (its own thread count)."""
    from deeplab.crf import DenseCRF

    torch.set_num_threads(threads)
    image, probs = make_input(*SIZES[size])
    ref, port = DenseCRF(backend="pydensecrf", **SETTING), DenseCRF(backend="torch", **SETTING)
    cuda = device == "cuda"
    image_in, probs_in = (
        (torch.from_numpy(image).cuda(), torch.from_numpy(probs).cuda()) if cuda else (image, probs)
    )
    ref(image, probs), port(image_in, probs_in)  # warm-up (allocator, CUDA context, caches)
    times = {"pydensecrf": [], "torch": []}
    for _ in range(repeats):
        q_ref, ms, cpu = timing.timed_call(lambda: ref(image, probs))
        times["pydensecrf"].append((ms, cpu))
        q_port, ms, cpu = timing.timed_call(lambda: port(image_in, probs_in), cuda)
        times["torch"].append((ms, cpu))
    labels = np.asarray(q_port.cpu() if cuda else q_port).argmax(0)
    return {
        backend: {"ms": min(t[0] for t in ts), "cpu_ms": min(t[1] for t in ts)}
        for backend, ts in times.items()
    } | {"agree": float((labels == q_ref.argmax(0)).mean())}


def whole_split(images: int, repeats: int) -> dict:
    """`images` VOC images: pydensecrf over 2 processes against torch with 2 threads."""
    from deeplab.crf import DenseCRF, refine_many

    torch.set_num_threads(2)
    data = [make_input(*SIZES["voc"], seed=i, index=i) for i in range(images)]
    rgbs, probs = [d[0] for d in data], [d[1] for d in data]
    ref, port = DenseCRF(backend="pydensecrf", **SETTING), DenseCRF(backend="torch", **SETTING)
    port(rgbs[0], probs[0])  # warm-up
    times = {"pydensecrf": [], "torch": []}
    for _ in range(repeats):
        times["pydensecrf"].append(timing.timed_call(lambda: refine_many(ref, rgbs, probs, 2))[1])
        times["torch"].append(
            timing.timed_call(lambda: [port(r, p) for r, p in zip(rgbs, probs, strict=True)])[1]
        )
    return {backend: {"ms": min(ts) / images} for backend, ts in times.items()}


def isolated(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=5, help="images in the whole-split row")
    parser.add_argument("--out", default="outputs/bench_crf.json")
    args = parser.parse_args()

    rows = []
    runs = [(size, t, "cpu") for size in args.sizes for t in args.threads]
    if torch.cuda.is_available():
        runs += [(size, 1, "cuda") for size in args.sizes]
    for size, threads, device in runs:
        r = isolated(side_by_side, size, args.repeats, threads, device)
        h, w, c = SIZES[size]
        rows.append(
            {"size": f"{size} {w}x{h}, {c} labels", "threads": threads, "device": device, **r}
        )
        print(
            f"{rows[-1]['size']:>30} torch {device} {threads} thread(s): "
            f"{r['torch']['ms']:7.0f} ms vs pydensecrf {r['pydensecrf']['ms']:7.0f} ms"
        )
    split = whole_split(args.images, args.repeats) if args.images else None  # spawns workers

    print(
        "\n| size | torch device, threads | pydensecrf ms | torch ms | speed-up (wall) "
        "| pydensecrf CPU ms | torch CPU ms | speed-up (CPU) | same labels |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ref, port = row["pydensecrf"], row["torch"]
        print(
            f"| {row['size']} | {row['device']}, {row['threads']} | {ref['ms']:.0f} | "
            f"{port['ms']:.0f} | {ref['ms'] / port['ms']:.2f}x | {ref['cpu_ms']:.0f} | "
            f"{port['cpu_ms']:.0f} | {ref['cpu_ms'] / port['cpu_ms']:.2f}x | "
            f"{100 * row['agree']:.3f}% |"
        )
    if split:
        ref, port = split["pydensecrf"]["ms"], split["torch"]["ms"]
        print(
            f"\n{args.images} VOC images, wall ms per image: pydensecrf 2 processes {ref:.0f}, "
            f"torch 2 threads {port:.0f}: speed-up {ref / port:.2f}x"
        )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "gpu": gpu,
        "torch": torch.__version__,
    }
    print(f"\nmachine: {machine}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "rows": rows, "whole_split": split}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
