"""Where the torch dense CRF's time goes: its stages on real VOC images, on one thread.

Runs `DenseCRF(backend="torch")` (10 iterations, the released VGG-16 kernels) on the same inputs
as experiments/bench_crf.py (`--images` VOC val images, every `--step`-th, coarse noisy softmax
from the truth) under `torch.profiler`, `--repeats` times after a warm-up. The profiler times
each stage the code labels with `record_function` (`crf.*`: the bilateral lattice build, its
normalisation, the stacked operator, and per call of the mean field's splat, blur, slice and
softmax) by the clock, which on a shared machine counts the time the process waits too; so each
stage's share of the profiled wall time is printed as that share of the process CPU time per
image, and the rest of the call as "other" (input checks, unary, output):

    python experiments/profile_crf.py --normalization per_pixel
"""

import argparse
import time

import torch
from bench_crf import voc_val  # this folder: the benchmark's inputs

STAGES = ("lattice", "normalisation", "operator", "splat", "blur", "slice", "softmax")


def main() -> None:
    from deeplab.crf import DenseCRF

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--step", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--normalization", default="per_pixel")
    args = parser.parse_args()

    torch.set_num_threads(1)
    inputs = [(image, probs) for _, image, probs in voc_val(args.images, args.step)]
    crf = DenseCRF(backend="torch", normalization=args.normalization)
    crf(*inputs[0])  # warm-up; the smoothness lattice of each image size is cached from here on
    runs = args.repeats * len(inputs)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.repeats):
            for image, probs in inputs:
                crf(image, probs)
        wall_us = 1e6 * (time.perf_counter() - start)
        total = 1000 * (time.process_time() - cpu_start) / runs
    per_stage = {stage: 0.0 for stage in STAGES}
    calls = dict(per_stage)
    for event in prof.key_averages():
        if event.key.startswith("crf.") and event.key[4:] in per_stage:
            per_stage[event.key[4:]] = total * event.cpu_time_total / wall_us
            calls[event.key[4:]] = event.count / runs
    print(
        f"\n{len(inputs)} VOC val images, {args.normalization}, 10 iterations, 1 thread, process "
        f"CPU ms per image under the profiler (mean of {args.repeats} rounds):\n\n"
        "| stage | ms / image | calls / image |\n|---|---:|---:|"
    )
    for stage in STAGES:
        print(f"| {stage} | {per_stage[stage]:.1f} | {calls[stage]:g} |")
    print(f"| other | {total - sum(per_stage.values()):.1f} | |\n| total | {total:.1f} | |")


if __name__ == "__main__":
    main()
