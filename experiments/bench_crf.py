"""Dense CRF speed: pydensecrf against the torch port, timed side by side in one run.

On ONE thread (pydensecrf is single-threaded; `torch.set_num_threads(1)`), 10 mean-field
iterations, the released VGG-16 kernels (DenseCRF's defaults), in both normalisations
(`symmetric`, pydensecrf's default, and `per_pixel`, `crf=deeplab_vgg16`):

- VOC: `--images` real VOC val images at their own size (every `--step`-th of the sample's val
  list), 21 labels;
- Cityscapes size: the first of them resized to 2048 x 1024, 19 labels, with each backend's peak
  memory (the process's peak resident memory during one refinement, above what it held before,
  each backend in its own fresh process).

The unary is a coarse, noisy softmax made from the image's truth, since the lattice's size, and
so the time, depends on image content. Each backend runs alone in a fresh process, as in use (in
one process, pydensecrf's large frees raise glibc's mmap threshold, which changes how torch's
arrays are allocated: docs/crf.md, Speed): a warm-up pass over the images, then a timed one. The
machine may be shared, so those processes alternate (pydensecrf, torch, pydensecrf, ...)
`--repeats` times, each image keeps its minimum, and the row is the mean over the images. The
ratio of the two is the figure to read; wall and process CPU time both (on a loaded machine the
CPU time is the steadier). Also reports the share of pixels where torch's labels equal
pydensecrf's. Prints a markdown table and a README-ready row, and writes JSON:

    python experiments/bench_crf.py --out outputs/bench_crf.json
"""

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from timing import timed_call  # this folder: the timers shared with bench.py and the GPU report

SIZES = {"voc": (375, 500, 21), "cityscapes": (1024, 2048, 19)}
VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/voc_sample/VOC2012"
NORMALIZATIONS = ("symmetric", "per_pixel")
COMMAND = "python experiments/bench_crf.py"


def coarse_softmax(mask: np.ndarray, classes: int, seed: int = 0) -> np.ndarray:
    """A coarse, noisy "network output" (C, H, W) from the truth (H, W): one-hot, 8x
    average-pooled, noised, bilinearly upsampled, softmaxed; void (255) votes background."""
    mask = np.where(mask == 255, 0, mask).astype(np.int64) % classes
    g = torch.Generator().manual_seed(seed)
    one_hot = F.one_hot(torch.from_numpy(mask), classes).permute(2, 0, 1).float()[None]
    low = 4 * F.avg_pool2d(one_hot, 8, ceil_mode=True)
    low = low + torch.randn(low.shape, generator=g)
    up = F.interpolate(low, size=mask.shape, mode="bilinear", align_corners=False)
    return torch.softmax(up[0], 0).numpy()


def _read(name: str) -> tuple[np.ndarray, np.ndarray]:
    from deeplab.data.dataset import read_mask
    from deeplab.data.images import read_rgb

    image = read_rgb(VOC_SAMPLE / "JPEGImages" / f"{name}.jpg")
    return image, read_mask(VOC_SAMPLE / "SegmentationClassAug" / f"{name}.png")


def make_input(height: int, width: int, classes: int, seed: int = 0, index: int = 0):
    """A real photo resized to (height, width) and a coarse, noisy softmax from its truth (VOC
    sample if present, else a smooth synthetic scene)."""
    names = sorted((VOC_SAMPLE / "JPEGImages").glob("*.jpg")) if VOC_SAMPLE.is_dir() else []
    if names:
        image, mask = _read(names[index % len(names)].stem)
    else:
        yy, xx = np.mgrid[0:375, 0:500]
        image = np.stack([xx * 255 // 500, yy * 255 // 375, (xx + yy) % 256], -1).astype(np.uint8)
        mask = ((xx - 250) ** 2 + (yy - 190) ** 2 < 100**2).astype(np.uint8)
    image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(image), coarse_softmax(mask, classes, seed)


def voc_val(count: int, step: int, classes: int = 21) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, coarse softmax) of every `step`-th image of the sample's val list, at their
    own sizes."""
    names = (VOC_SAMPLE / "ImageSets/Segmentation/val.txt").read_text().split()[::step][:count]
    out = []
    for seed, name in enumerate(names):
        image, mask = _read(name)
        out.append((name, image, coarse_softmax(mask, classes, seed)))
    return out


BACKENDS = ("pydensecrf", "torch")


def _crf(normalization: str, backend: str):
    from deeplab.crf import DenseCRF

    return DenseCRF(backend=backend, normalization=normalization)


def one_round(inputs: list, normalization: str, backend: str) -> dict:
    """One backend alone, as it runs in use, on one thread: a warm-up pass over the images (the
    allocator, and the smoothness lattice cached per image size, as over a split), then each
    image once; per image the wall and CPU ms and the labels. Runs in a fresh process."""
    torch.set_num_threads(1)
    crf = _crf(normalization, backend)
    for image, probs in inputs:
        crf(image, probs)
    wall, cpu, labels = [], [], []
    for image, probs in inputs:
        out, ms, cpu_ms = timed_call(lambda: crf(image, probs))  # noqa: B023
        wall.append(ms)
        cpu.append(cpu_ms)
        labels.append(out.argmax(0).astype(np.uint8))
    return {"wall": wall, "cpu": cpu, "labels": labels}


def alternating(inputs: list, normalization: str, repeats: int) -> dict:
    """Both backends, each in its own fresh process (`one_round`), the processes alternating
    (pydensecrf, torch, pydensecrf, ...) `repeats` times, so that a change of the machine's
    speed reaches both; per image the minimum, and the share of pixels whose labels agree."""
    best = {backend: [float("inf")] * len(inputs) for backend in BACKENDS}
    best_cpu = {backend: [float("inf")] * len(inputs) for backend in BACKENDS}
    labels = {}
    for _ in range(repeats):
        for backend in BACKENDS:
            r = isolated(one_round, inputs, normalization, backend)
            best[backend] = [min(a, b) for a, b in zip(best[backend], r["wall"], strict=True)]
            best_cpu[backend] = [
                min(a, b) for a, b in zip(best_cpu[backend], r["cpu"], strict=True)
            ]
            labels[backend] = r["labels"]
    same = sum(
        int((torch_labels == reference).sum())
        for torch_labels, reference in zip(labels["torch"], labels["pydensecrf"], strict=True)
    )
    pixels = sum(p.shape[1] * p.shape[2] for _, p in inputs)
    return {
        "ms": {backend: float(np.mean(ms)) for backend, ms in best.items()},
        "cpu_ms": {backend: float(np.mean(ms)) for backend, ms in best_cpu.items()},
        "per_image_ms": best,
        "agree": same / pixels,
    }


def _memory_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def peak_memory(inputs: list, normalization: str, backend: str) -> float:
    """MiB of resident memory one refinement adds at its peak, in a fresh process."""
    torch.set_num_threads(1)
    crf = _crf(normalization, backend)
    image, probs = inputs[0]
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    before = _memory_kib("VmRSS")
    crf(image, probs)
    return (_memory_kib("VmHWM") - before) / 1024


def one_backend(backend: str, device: str, size: str, repeats: int, threads: int) -> dict:
    """ms per image (min of `repeats` after a first call) and peak MiB (resident memory on the
    CPU, allocated memory on CUDA) of one backend at one size, `crf=deeplab_vgg16`'s setting."""
    from deeplab.crf import DenseCRF

    torch.set_num_threads(threads)
    image, probs = make_input(*SIZES[size])
    crf = DenseCRF(backend=backend, normalization="per_pixel")
    cuda = device == "cuda"
    if cuda:
        image, probs = torch.from_numpy(image).cuda(), torch.from_numpy(probs).cuda()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")
        before = _memory_kib("VmRSS") * 1024
    crf(image, probs)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _memory_kib("VmHWM") * 1024 - before
    best = min(timed_call(lambda: crf(image, probs), cuda)[1] for _ in range(repeats))
    return {"ms": best, "peak_mib": peak / 2**20}


def run_isolated(backend: str, device: str, size: str, repeats: int, threads: int) -> dict:
    """`one_backend` in a fresh process (experiments/bench.py's CRF rows)."""
    return isolated(one_backend, backend, device, size, repeats, threads)


def isolated(fn, *args):
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(fn, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="VOC val images")
    parser.add_argument("--step", type=int, default=9, help="every step-th of the val list")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cityscapes-repeats", type=int, default=2, help="0 skips that row")
    parser.add_argument("--normalizations", nargs="+", default=list(NORMALIZATIONS))
    parser.add_argument("--out", default="outputs/bench_crf.json")
    args = parser.parse_args()

    voc = voc_val(args.images, args.step)
    names = [name for name, _, _ in voc]
    voc = [(image, probs) for _, image, probs in voc]
    rows = []
    for normalization in args.normalizations:
        r = alternating(voc, normalization, args.repeats)
        rows.append({"size": "voc", "normalization": normalization, **r})
    if args.cityscapes_repeats:
        h, w, c = SIZES["cityscapes"]
        city = [make_input(h, w, c)]
        for normalization in args.normalizations:
            r = alternating(city, normalization, args.cityscapes_repeats)
            r["peak_mib"] = {
                backend: isolated(peak_memory, city, normalization, backend) for backend in BACKENDS
            }
            rows.append({"size": "cityscapes", "normalization": normalization, **r})

    print(
        f"\n{len(names)} VOC val images ({', '.join(names)}), 10 iterations, 1 thread, ms per "
        f"image (min of {args.repeats} alternating runs, mean over the images):\n"
    )
    print(
        "| size | normalisation | pydensecrf ms | torch ms | speed-up (wall) | pydensecrf CPU ms "
        "| torch CPU ms | speed-up (CPU) | same labels | peak MiB pydensecrf / torch |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ref, port = row["ms"]["pydensecrf"], row["ms"]["torch"]
        ref_cpu, port_cpu = row["cpu_ms"]["pydensecrf"], row["cpu_ms"]["torch"]
        size = (
            f"VOC, {len(names)} val images, 21 labels"
            if row["size"] == "voc"
            else "Cityscapes 2048x1024, 19 labels"
        )
        peak = row.get("peak_mib")
        peak = f"{peak['pydensecrf']:.0f} / {peak['torch']:.0f}" if peak else ""
        print(
            f"| {size} | {row['normalization']} | {ref:.0f} | {port:.0f} | {ref / port:.2f}x | "
            f"{ref_cpu:.0f} | {port_cpu:.0f} | {ref_cpu / port_cpu:.2f}x | "
            f"{100 * row['agree']:.3f}% | {peak} |"
        )
    voc_rows = [r for r in rows if r["size"] == "voc"]
    city_rows = [r for r in rows if r["size"] == "cityscapes"]
    figures = [
        f"{r['normalization']} {r['ms']['torch']:.0f} vs {r['ms']['pydensecrf']:.0f} ms "
        f"(**{r['ms']['pydensecrf'] / r['ms']['torch']:.2f}x** wall, "
        f"{r['cpu_ms']['pydensecrf'] / r['cpu_ms']['torch']:.2f}x CPU)"
        for r in voc_rows
    ]
    agree = min(r["agree"] for r in rows)
    figures += [
        f"Cityscapes size {r['normalization']} {r['ms']['pydensecrf'] / r['ms']['torch']:.2f}x "
        f"wall ({r['cpu_ms']['pydensecrf'] / r['cpu_ms']['torch']:.2f}x CPU), "
        f"peak {r['peak_mib']['torch']:.0f} MiB"
        for r in city_rows
    ]
    command = " ".join([COMMAND, *sys.argv[1:]])
    print(
        f"\nREADME row:\n| Torch dense CRF against pydensecrf (C++), {len(names)} VOC val images, "
        f"1 thread, 10 iterations | {'; '.join(figures)}; >= {100 * agree:.3f} % of labels equal | "
        f"{datetime.date.today()} | `{command}` |"
    )
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "torch": torch.__version__,
    }
    print(f"\nmachine: {machine}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine, "images": names, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
