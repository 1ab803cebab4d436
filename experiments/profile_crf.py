"""Where the torch dense CRF's time goes: its stages on real VOC images, on one thread.

Runs `DenseCRF(backend="torch")` (10 iterations, the released VGG-16 kernels) on the same inputs
as experiments/bench_crf.py (`--images` VOC val images, every `--step`-th, coarse noisy softmax
from the truth; with `--size cityscapes` its Cityscapes-size input instead: the first of them
resized to 2048 x 1024, 19 labels) under `torch.profiler`, `--repeats` times after a warm-up.
The profiler times each stage the code labels with `record_function` (`crf.*`: the bilateral
lattice build, its normalisation, the stacked operator, and per call of the mean field's splat,
blur, slice and softmax) by the clock, which on a shared machine counts the time the process
waits too; so each stage's share of the profiled wall time is printed as that share of the
process CPU time per image, and the rest of the call as "other" (input checks, unary, output):

    python experiments/profile_crf.py --normalization per_pixel [--size cityscapes]
"""

import argparse
import time

import torch
from bench_crf import SIZES, make_input, voc_val  # this folder: the benchmark's inputs

STAGES = ("lattice", "normalisation", "operator", "splat", "blur", "slice", "softmax")


def profiled(run, stages: tuple[str, ...]) -> tuple[dict, dict, float]:
    """Run `run()` once under the profiler: (process CPU ms per labelled stage `crf.<stage>`, calls
    per stage, total process CPU ms). A stage gets its share of the profiled wall time, as that
    share of the CPU time (the clock counts the time a shared machine makes the process wait)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        wall_us = 1e6 * (time.perf_counter() - start)
        total = 1000 * (time.process_time() - cpu_start)
    per_stage, calls = dict.fromkeys(stages, 0.0), dict.fromkeys(stages, 0)
    for event in prof.key_averages():
        if event.key.startswith("crf.") and event.key[4:] in per_stage:
            per_stage[event.key[4:]] = total * event.cpu_time_total / wall_us
            calls[event.key[4:]] = event.count
    return per_stage, calls, total


def stage_times(crf, inputs: list, repeats: int) -> tuple[dict, dict, float]:
    """`profiled` per image: `crf` over `inputs` (image, probs) `repeats` times, after one
    warm-up call (the smoothness lattice of each image size is cached from there on)."""
    crf(*inputs[0])

    def run():
        for _ in range(repeats):
            for image, probs in inputs:
                crf(image, probs)

    per_stage, calls, total = profiled(run, STAGES)
    runs = repeats * len(inputs)
    return (
        {stage: ms / runs for stage, ms in per_stage.items()},
        {stage: count / runs for stage, count in calls.items()},
        total / runs,
    )


def main() -> None:
    from deeplab.crf import DenseCRF

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--step", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--normalization", default="per_pixel")
    parser.add_argument("--size", choices=("voc", "cityscapes"), default="voc")
    args = parser.parse_args()

    torch.set_num_threads(1)
    if args.size == "voc":
        inputs = [(image, probs) for _, image, probs in voc_val(args.images, args.step)]
        what = f"{len(inputs)} VOC val images"
    else:
        h, w, c = SIZES["cityscapes"]
        inputs = [make_input(h, w, c)]
        what = f"one {w} x {h} image ({c} labels)"
    crf = DenseCRF(backend="torch", normalization=args.normalization)
    per_stage, calls, total = stage_times(crf, inputs, args.repeats)
    print(
        f"\n{what}, {args.normalization}, 10 iterations, 1 thread, process "
        f"CPU ms per image under the profiler (mean of {args.repeats} rounds):\n\n"
        "| stage | ms / image | calls / image |\n|---|---:|---:|"
    )
    for stage in STAGES:
        print(f"| {stage} | {per_stage[stage]:.1f} | {calls[stage]:g} |")
    print(f"| other | {total - sum(per_stage.values()):.1f} | |\n| total | {total:.1f} | |")


if __name__ == "__main__":
    main()
