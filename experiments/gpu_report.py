"""Every GPU number of this repository from one command of under 8 minutes, as a markdown report.

    python experiments/gpu_report.py --out gpu_report.md      # one H100/H200-class GPU: ~7.5 min
    python experiments/gpu_report.py --device cpu --tiny      # the CPU dry run (tests): seconds

Stages, in this order, each under its own time cap within one global budget (`--budget`):
  crf      the torch dense CRF on the device (`crf=deeplab_vgg16`, 10 iterations) at batch 1 and 8
           against the reference on one CPU core (pydensecrf, or torch where pydensecrf is not
           installed), VOC size (500 x 375, 21 labels) and Cityscapes size (2048 x 1024, 19
           labels): ms per image, peak memory, same labels as the reference; then the CRF-RNN
           layer with the same kernels at batch 1: forward (10 iterations, no autograd) and
           forward + backward (5 iterations), as evaluation and training run it;
  train    img/s of `model=aspp_l backbone=resnet101 model.msc=true`, batch 10, 321 crops, in
           fp32, bf16-mixed and bf16 + channels_last; the loss of one fixed batch in fp32 and bf16
           (NaN check, relative difference); the step time of Table 1's VGG-16 rows, fp32 and bf16;
  compile  the same ResNet step with bf16 + channels_last + torch.compile, compile time apart;
  eval     img/s of the full ResNet-101 ASPP-L at 513 x 513 as `evaluate.py` wraps it: plain,
           flip, MSC, MSC + flip, five-scale TTA + flip, and with the torch CRF on the device.
Networks are composed from conf/ like `train.py` does, with random weights; inputs are real
images of the VOC sample beside the checkout when present, else a synthetic scene (both via
experiments/bench_crf.py). No network, no logger. A stage that raises or passes its cap is
recorded in the report with its error and the next stage runs; one failed row (e.g. out of
memory) is recorded and the stage goes on; a stage with too little budget left is skipped and
marked so. Each row is printed when measured and the report rewritten, so even a run killed from
outside leaves what it measured.
"""

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import timing
import torch
from gpu_report_core import (
    FULL,
    REPO,
    TINY,
    OutOfTime,
    Profile,
    Report,
    Run,
    Section,
    free_memory,
    one_line,
    time_cap,
)
from gpu_report_crf import REFERENCE, crf_stage
from gpu_report_networks import compile_stage, eval_stage, train_stage

STAGES = ("crf", "train", "compile", "eval")


MIN_STAGE_S = 5.0  # a stage with less budget left than this is skipped rather than started


STAGE_FUNCTIONS = {
    "crf": crf_stage,
    "train": train_stage,
    "compile": compile_stage,
    "eval": eval_stage,
}


def sections(profile: Profile) -> dict[str, Section]:
    p = profile
    return {
        "crf": Section(
            "Dense CRF: torch on the device against the reference on one CPU core",
            "`crf=deeplab_vgg16`, 10 mean-field iterations; torch timed as one batched call "
            f"(median of {p.crf_steps} after {min(p.warmup, 1)} warm-up), ms / image = call / "
            "batch; "
            "the reference timed per image (median) on one core: pydensecrf (C++) where it is "
            "installed, else the torch backend on the CPU. Agreement: share of pixels with the "
            "same label on the images the reference refined. Inputs: bench_crf.make_input "
            "(a VOC sample photo with a coarse noisy softmax from its truth, a new noise seed per "
            "image of the batch; a synthetic scene without the sample). Peak MiB: "
            "torch.cuda.max_memory_allocated during the calls, inputs included (CPU dry run: "
            "the process's peak RSS).",
            [
                "size",
                "backend",
                "device",
                "batch",
                "ms / image",
                "x reference",
                "peak MiB",
                "same labels as reference",
                "goal (GPU)",
            ],
        ),
        "loss": Section(
            "Training loss on a fixed batch",
            "`model=aspp_l backbone=resnet101 model.msc=true`, seed-0 random weights, one batch, "
            "no update: deeplab.engine.losses.segmentation_loss (the fused and the three scales' "
            "losses).",
            ["precision", "loss", "finite", "relative difference to fp32"],
        ),
        "train": Section(
            "Training: ResNet-101 ASPP-L with MSC",
            "`model=aspp_l backbone=resnet101 model.msc=true`: forward, loss, backward, SGD step "
            f"(conf/train.yaml's optim), median of {p.steps} steps after the first step and "
            f"{p.warmup} warm-up. `first step s` is the compile time for the compile row. fp32 "
            "keeps PyTorch's defaults (TF32 convolutions allowed, see the header).",
            [
                "variant",
                "batch x crop",
                "first step s",
                "s / step",
                "img/s",
                "peak MiB",
                "losses finite",
            ],
        ),
        "vgg": Section(
            "Training: Table 1 VGG-16 rows",
            "`model=<row> backbone=vgg16`, same step and batch as above. The paper's speed was "
            "measured on its own GPU (2016) and recipe.",
            [
                "model",
                "precision",
                "batch x crop",
                "first step s",
                "s / step",
                "img/s",
                "peak MiB",
                "losses finite",
                "paper img/s",
            ],
        ),
        "eval": Section(
            "Evaluation: ResNet-101 ASPP-L, one image at a time",
            "conf/evaluate.yaml's network (deeplab.engine.test_time.evaluation_network over "
            "`tta`), softmax at full size, then `crf=deeplab_resnet101` with the torch backend "
            "on the device, then argmax; "
            f"median of {p.steps} after {p.warmup} warm-up.",
            ["pipeline", "precision", "input", "ms / image", "img/s", "peak MiB"],
        ),
    }


def header(args: argparse.Namespace, device: torch.device, profile: Profile) -> list[str]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory / 2**30
        name = f"{name} ({total:.0f} GiB)"
    else:
        name = f"CPU only: {timing.cpu_name()} (a dry run, not GPU figures)"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return [
        "# GPU report",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- device: {name}",
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"cuDNN {torch.backends.cudnn.version()}, TF32 convolutions "
        f"{torch.backends.cudnn.allow_tf32}, TF32 matmul {torch.backends.cuda.matmul.allow_tf32}",
        f"- CPU (the CRF reference, {REFERENCE}): {timing.cpu_name()}, {os.cpu_count()} cores",
        f"- profile: {'tiny' if args.tiny else 'full'} (width x{profile.width_mult}, crop "
        f"{profile.crop}, batch {profile.batch}, eval {profile.eval_size}), "
        f"budget {args.budget:.0f} s",
        f"- command: `python experiments/gpu_report.py {' '.join(sys.argv[1:])}`"
        + (f" at commit {commit}" if commit else ""),
    ]


def run_stages(run: Run, stages: list[str], budget_s: float, caps: dict) -> None:
    """Each stage under min(its cap, the budget left); errors and overruns are recorded."""
    deadline = time.monotonic() + budget_s
    for name in stages:
        left = deadline - time.monotonic()
        cap = min(caps[name], left)
        if cap < min(MIN_STAGE_S, caps[name]) or left <= 0:
            run.report.stage(name, None, f"skipped: {max(left, 0):.0f} s of the budget left")
            continue
        start = time.monotonic()
        try:
            with time_cap(cap):
                STAGE_FUNCTIONS[name](run)
            status = "done"
        except OutOfTime as error:
            status = f"{error} (rows above are those measured before)"
        except Exception as error:  # noqa: BLE001 - the report must survive any stage's failure
            status = f"failed: {one_line(error)}"
        free_memory()
        run.report.stage(name, time.monotonic() - start, status)


def parse_caps(parser: argparse.ArgumentParser, items: list[str]) -> dict:
    caps = {}
    for item in items:
        stage, _, seconds = item.partition("=")
        try:
            if stage not in STAGES:
                raise ValueError(stage)
            caps[stage] = float(seconds)
        except ValueError:
            parser.error(f"--cap {item}: expected STAGE=SECONDS with STAGE one of {STAGES}")
    return caps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--out", default="gpu_report.md", help="markdown report path")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, 1/16 width: the dry run")
    parser.add_argument("--budget", type=float, default=440.0, help="seconds for all stages")
    parser.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="STAGE=SECONDS",
        help=f"override a stage's time cap (stages: {', '.join(STAGES)})",
    )
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if set(stages) - set(STAGES):
        parser.error(f"--stages: unknown {sorted(set(stages) - set(STAGES))}; use {STAGES}")
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: torch sees no CUDA device; --device cpu --tiny is the dry run")
    device = torch.device(
        "cuda" if args.device == "cuda" or (args.device == "auto" and cuda) else "cpu"
    )
    profile = TINY if args.tiny else FULL
    if profile.threads:
        torch.set_num_threads(profile.threads)
    caps = {**profile.caps, **parse_caps(parser, args.cap)}
    caps = {s: caps[s] for s in stages}
    report = Report(Path(args.out), header(args, device, profile), sections(profile), caps)
    print("\n".join(report.header), flush=True)
    run_stages(Run(device, profile, report), stages, args.budget, caps)
    print(f"report: {report.path}", flush=True)


if __name__ == "__main__":
    main()
