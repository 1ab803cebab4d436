"""The GPU report's `crf` stage: the torch dense CRF on the device against the CPU reference,
then the CRF-RNN layer with the same kernels (experiments/gpu_report.py)."""

import statistics
import time

import bench_crf
import numpy as np
import timing
import torch
from gpu_report_core import Run, refine_batch
from hydra.utils import instantiate

from deeplab.crf import pydensecrf_backend
from deeplab.crf.crf_rnn import CRFRNN

CRF_BATCHES = (1, 8)


CRF_SETTING = ["crf=deeplab_vgg16"]


# The CPU reference the device's CRF is timed and checked against (design: pydensecrf is optional)
REFERENCE = "pydensecrf" if pydensecrf_backend.available() else "torch"


CRF_GOALS_MS = {"VOC": 10, "Cityscapes": 100}  # issue 15: 100x pydensecrf on one VOC image


def crf_stage(run: Run) -> None:
    for name, (height, width, labels) in run.profile.crf_sizes.items():
        crf_size(run, name, height, width, labels)


def crf_size(run: Run, name: str, height: int, width: int, labels: int) -> None:
    """The reference first (a few seconds), then torch at batch 1 and 8, so that a cap reached
    in the largest call, Cityscapes at batch 8, loses only that row."""
    size = f"{name} {width}x{height}, {labels} labels"
    inputs = [bench_crf.make_input(height, width, labels, seed) for seed in range(max(CRF_BATCHES))]
    ref_ms, ref_labels = crf_reference(run, inputs[: run.profile.crf_references[name]])
    run.report.add(
        "crf",
        {
            "size": size,
            "backend": REFERENCE,
            "device": "CPU, 1 core",
            "batch": 1,
            "ms / image": f"{ref_ms:.1f} ({len(ref_labels)} images)",
            "x reference": "1.00",
            "peak MiB": "-",
            "same labels as reference": "reference",
            "goal (GPU)": "-",
        },
    )
    crf = instantiate(run.config("train", CRF_SETTING).crf, backend="torch", device=str(run.device))
    images = [torch.from_numpy(image).to(run.device) for image, _ in inputs]
    probs = [torch.from_numpy(p).to(run.device) for _, p in inputs]
    for batch in CRF_BATCHES:
        measured = run.report.attempt(
            "crf",
            f"torch CRF, {size}, batch {batch}",
            lambda b=batch: crf_torch(run, crf, images[:b], probs[:b]),
        )
        if measured is None:
            continue
        seconds, peak, out_labels = measured
        ms = 1000 * seconds / batch
        pairs = list(zip(out_labels, ref_labels, strict=False))  # the images both refined
        agree = np.mean([(a == b).mean() for a, b in pairs])
        goal = CRF_GOALS_MS[name]
        run.report.add(
            "crf",
            {
                "size": size,
                "backend": "torch",
                "device": str(run.device),
                "batch": batch,
                "ms / image": f"{ms:.1f}",
                "x reference": f"{ref_ms / ms:.2f}",
                "peak MiB": peak,
                "same labels as reference": f"{100 * agree:.3f}% ({len(pairs)} images)",
                "goal (GPU)": f"< {goal} ms: {'met' if ms < goal else 'not met'}",
            },
        )
    crf_rnn_rows(run, crf, size, images[:1], probs[:1], ref_ms)  # last: a cap loses only these


def crf_rnn_rows(run: Run, crf, size: str, images: list, probs: list, ref_ms: float) -> None:
    """The CRF-RNN layer with the same kernels (`CRFRNN.from_dense_crf`): a forward without
    autograd (an evaluation, 10 iterations) and a forward + backward of a loss on its scores
    (training, 5), both w.r.t. the scores and the layer's parameters."""
    labels = probs[0].shape[0]
    rgb = torch.stack(images).permute(0, 3, 1, 2).float()
    logits = torch.stack(probs).clamp_min(1e-5).log()
    for what, iterations, train in (("forward", 10, False), ("forward + backward", 5, True)):
        layer = CRFRNN.from_dense_crf(crf, labels, iterations).to(run.device)
        scores = logits.clone().requires_grad_(train)

        def call(layer=layer, scores=scores, train=train) -> None:
            with torch.set_grad_enabled(train):
                out = layer(scores, rgb)
                if train:
                    out.logsumexp(1).mean().backward()

        batch = len(images)
        measured = run.report.attempt(
            "crf", f"CRF-RNN {what}, {size}, batch {batch}", lambda c=call: crf_rnn_time(run, c)
        )
        if measured is None:
            continue
        seconds, peak = measured
        ms = 1000 * seconds / batch
        run.report.add(
            "crf",
            {
                "size": size,
                "backend": f"CRF-RNN {what}, {iterations} it",
                "device": str(run.device),
                "batch": batch,
                "ms / image": f"{ms:.1f}",
                "x reference": f"{ref_ms / ms:.2f}",
                "peak MiB": peak,
                "same labels as reference": "-",
                "goal (GPU)": "-",
            },
        )


def crf_rnn_time(run: Run, call) -> tuple[float, str]:
    """Median seconds of `call()` and the peak memory."""
    run.reset_peak()
    seconds = timing.median_seconds(
        call, run.device, min(run.profile.warmup, 1), run.profile.crf_steps
    )[0]
    return seconds, run.peak_mib()


def crf_torch(run: Run, crf, images: list, probs: list) -> tuple[float, str, list]:
    """Median seconds of one batched call, peak memory, and the labels of the first images."""
    out = []

    def call() -> None:
        out[:] = refine_batch(crf, images, probs)

    run.reset_peak()
    seconds = timing.median_seconds(
        call, run.device, min(run.profile.warmup, 1), run.profile.crf_steps
    )[0]
    return seconds, run.peak_mib(), [q.argmax(0).cpu().numpy() for q in out]


def crf_reference(run: Run, inputs: list) -> tuple[float, list]:
    """The reference CRF on one CPU core on each image: median ms per image and the labels.
    pydensecrf (single-threaded C++) where it is installed, else the torch backend on the CPU
    with one thread (machines that cannot build pydensecrf)."""
    crf = instantiate(run.config("train", CRF_SETTING).crf, backend=REFERENCE, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times, labels = [], []
    try:
        for image, probs in inputs:
            start = time.perf_counter()
            labels.append(crf(image, probs).argmax(0))
            times.append(1000 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times), labels
