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
import contextlib
import dataclasses
import functools
import gc
import os
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import bench
import bench_crf
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from deeplab.crf import pydensecrf_backend
from deeplab.crf.crf_rnn import CRFRNN
from deeplab.data.normalization import normalize
from deeplab.engine import speed
from deeplab.engine.losses import segmentation_loss
from deeplab.engine.optimizer import build_optimizer
from deeplab.engine.test_time import evaluation_network, resize
from deeplab.runtime.config import compose
from deeplab.tables.paper import SPEED, TABLE1

REPO = Path(__file__).resolve().parents[1]
STAGES = ("crf", "train", "compile", "eval")
MIN_STAGE_S = 5.0  # a stage with less budget left than this is skipped rather than started
CRF_BATCHES = (1, 8)
CRF_SETTING = ["crf=deeplab_vgg16"]
# The CPU reference the device's CRF is timed and checked against (design: pydensecrf is optional)
REFERENCE = "pydensecrf" if pydensecrf_backend.available() else "torch"
CRF_GOALS_MS = {"VOC": 10, "Cityscapes": 100}  # issue 15: 100x pydensecrf on one VOC image
RESNET = ["model=aspp_l", "backbone=resnet101"]
BF16, CHANNELS_LAST = "trainer.precision=bf16-mixed", "speed.channels_last=true"
TRAIN_VARIANTS = {
    "fp32": [],
    "bf16-mixed": [BF16],
    "bf16 + channels_last": [BF16, CHANNELS_LAST],
}
COMPILE_VARIANT = {"bf16 + channels_last + compile": [BF16, CHANNELS_LAST, "speed.compile=true"]}
PRECISIONS = {"fp32": [], "bf16-mixed": [BF16]}
EVAL_CRF = "crf=deeplab_resnet101"  # the setting published for the ResNet-101 model
# row -> overrides of conf/evaluate.yaml: the network as `evaluate.py` wraps it
EVAL_ROWS = {
    "plain": [],
    "flip": ["tta.flip=true"],
    "MSC (model.msc: 1, 0.75, 0.5, max)": ["model.msc=true"],
    "MSC + flip": ["model.msc=true", "tta.flip=true"],
    "TTA scales 0.5-1.5 + flip": ["tta.scales=[0.5,0.75,1.0,1.25,1.5]", "tta.flip=true"],
    "plain + CRF": [EVAL_CRF],
    "MSC + flip + CRF": ["model.msc=true", "tta.flip=true", EVAL_CRF],
    "plain, bf16": [BF16],
    "MSC + flip + CRF, bf16": ["model.msc=true", "tta.flip=true", EVAL_CRF, BF16],
}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes, repeats and stage caps of a run: FULL is the paper's, TINY the CPU dry run."""

    crf_sizes: dict  # name -> (height, width, labels)
    crf_references: dict  # name -> images pydensecrf refines (~1 s VOC, ~12 s Cityscapes each)
    width_mult: float
    crop: int
    batch: int
    eval_size: int
    warmup: int
    steps: int
    crf_steps: int  # a Cityscapes batch of 8 may take seconds per call on today's torch CRF
    caps: dict  # stage -> seconds
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


FULL = Profile(
    crf_sizes={"VOC": bench_crf.SIZES["voc"], "Cityscapes": bench_crf.SIZES["cityscapes"]},
    crf_references={"VOC": 2, "Cityscapes": 1},
    width_mult=1.0,
    crop=321,
    batch=10,
    eval_size=513,
    warmup=2,
    steps=5,
    crf_steps=3,
    caps={"crf": 100, "train": 120, "compile": 150, "eval": 60},
)
TINY = Profile(
    crf_sizes={"VOC": (30, 40, 21), "Cityscapes": (32, 64, 19)},
    crf_references={"VOC": 2, "Cityscapes": 1},
    width_mult=0.0625,
    crop=41,
    batch=2,
    eval_size=41,
    warmup=0,
    steps=1,
    crf_steps=1,
    # torch.compile on a CPU takes minutes: the dry run records it stopped at its cap
    caps={"crf": 60, "train": 60, "compile": 10, "eval": 60},
    threads=1,  # tiny ops: threads only add overhead (5-10x slower on a loaded 2-core machine)
)


class OutOfTime(BaseException):
    """A stage passed its cap. A BaseException, so that library code's `except Exception` (as in
    torch.compile) cannot swallow it."""


@contextlib.contextmanager
def time_cap(seconds: float):
    """Raise OutOfTime in the main thread after `seconds` (SIGALRM; at the next Python bytecode,
    so one long C++ call, e.g. pydensecrf on a Cityscapes image, finishes first)."""

    def on_alarm(signum, frame):
        raise OutOfTime(f"stopped at its {seconds:.0f} s cap")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclasses.dataclass
class Section:
    title: str
    intro: str
    columns: list[str]
    rows: list[dict] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)


class Report:
    """The markdown report, rewritten to `path` after every change so that a killed run leaves
    it; every row and note is printed too, as it comes."""

    def __init__(self, path: Path, header: list[str], sections: dict[str, Section], caps: dict):
        self.path, self.header, self.sections = path, header, sections
        self.stages = {
            s: {"cap s": f"{caps[s]:.0f}", "took s": "-", "status": "pending"} for s in caps
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.write()

    def add(self, key: str, row: dict) -> dict:
        self.sections[key].rows.append(row)
        self.show(key, row)
        return row

    def show(self, key: str, row: dict) -> None:
        """Print a new or updated row and rewrite the file."""
        print(f"[{key}] " + " | ".join(f"{k}: {v}" for k, v in row.items()), flush=True)
        self.write()

    def note(self, key: str, text: str) -> None:
        self.sections[key].notes.append(text)
        print(f"[{key}] {text}", flush=True)
        self.write()

    def stage(self, name: str, took_s: float | None, status: str) -> None:
        self.stages[name].update({"took s": "-" if took_s is None else f"{took_s:.0f}"})
        self.stages[name]["status"] = status
        print(f"== stage {name}: {status}", flush=True)
        self.write()

    def attempt(self, key: str, what: str, fn):
        """fn(), or None with the error noted: one failed row must not lose the stage's others."""
        try:
            return fn()
        except Exception as error:  # noqa: BLE001 - any failure of one row is reported, not fatal
            self.note(key, f"{what}: failed: {_one_line(error)}")
            free_memory()
            return None

    def render(self) -> str:
        lines = [
            *self.header,
            "",
            "## Stages",
            "",
            *_table(
                ["stage", "cap s", "took s", "status"],
                [{"stage": s, **v} for s, v in self.stages.items()],
            ),
        ]
        for section in self.sections.values():
            lines += ["", f"## {section.title}", "", section.intro, ""]
            lines += _table(section.columns, section.rows) if section.rows else ["(no rows)"]
            lines += [""] + [f"- {note}" for note in section.notes] if section.notes else []
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        self.path.write_text(self.render())


def _table(columns: list[str], rows: list[dict]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return out + ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def free_memory() -> None:
    """Collect reference cycles and return cached CUDA blocks (after a failed row, a stage)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclasses.dataclass
class Run:
    """What every stage needs: the device, the profile, the report and the composed overrides."""

    device: torch.device
    profile: Profile
    report: Report

    def config(self, name: str, overrides: list[str]):
        """conf/<name>.yaml with these overrides and this run's width, crop and batch.

        Group choices (`model=aspp_l`) go through Hydra's compose, once per set of choices
        (a composition takes ~0.3 s); values (`model.msc=true`) are merged onto a copy, which
        refuses unknown keys as compose does (the composed config is in struct mode)."""
        p = self.profile
        values = [f"model.width_mult={p.width_mult}", f"data.crop_size={p.crop}"]
        values += [f"data.batch_size={p.batch}"]
        groups = ["trainer=gpu"] if self.device.type == "cuda" else []
        for override in overrides:
            (values if "." in override.split("=")[0] else groups).append(override)
        return OmegaConf.merge(_compose(name, tuple(groups)), OmegaConf.from_dotlist(values))

    def timed(self, fn) -> float:
        """Median wall seconds of fn() after the warm-up calls (bench.py's timer: syncs CUDA)."""
        return bench._timed(fn, self.device, self.profile.warmup, self.profile.steps)[0]

    def reset_peak(self) -> None:
        """Before a row's timed calls. On CUDA also collect what earlier rows left in cycles,
        so that it does not count in this row's peak (on CPU, where the peak is the RSS and a
        collection costs up to a second on a busy machine, nothing)."""
        if self.device.type == "cuda":
            free_memory()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> str:
        """GPU: torch.cuda.max_memory_allocated since reset_peak; CPU: the process's peak RSS."""
        return f"{bench._peak_bytes(self.device) / 2**20:.0f}"


@functools.cache
def _compose(name: str, groups: tuple[str, ...]):
    return compose(name, list(groups))


def refine_batch(crf, images: list, maps: list, kind: str = "probs") -> list:
    """The CRF's batched entry point: one place to change if deeplab.crf renames it."""
    return crf.refine_batch(images, maps, kind)


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
    seconds = bench._timed(call, run.device, min(run.profile.warmup, 1), run.profile.crf_steps)[0]
    return seconds, run.peak_mib()


def crf_torch(run: Run, crf, images: list, probs: list) -> tuple[float, str, list]:
    """Median seconds of one batched call, peak memory, and the labels of the first images."""
    out = []

    def call() -> None:
        out[:] = refine_batch(crf, images, probs)

    run.reset_peak()
    seconds = bench._timed(call, run.device, min(run.profile.warmup, 1), run.profile.crf_steps)[0]
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


def fixed_batch(run: Run, cfg, size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized images and labels (the argmax of bench_crf's coarse truth-derived softmax)."""
    pairs = [bench_crf.make_input(size, size, cfg.data.num_classes, seed) for seed in range(count)]
    image = torch.stack([normalize(im, cfg.data.mean, cfg.data.std) for im, _ in pairs])
    mask = torch.stack([torch.from_numpy(p.argmax(0)) for _, p in pairs])
    return image.to(run.device), mask.to(run.device)


def build_net(run: Run, cfg) -> torch.nn.Module:
    """The composed network, initialised on the device (seed 0), speed options applied."""
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = bool(cfg.trainer.benchmark)
    with run.device:
        net = instantiate(cfg.model)
    return speed.apply_speed_options(net, cfg.speed)


def autocast(run: Run, cfg):
    """bf16 autocast when the composed config asks for `trainer.precision=bf16-mixed`."""
    bf16 = cfg.trainer.precision == "bf16-mixed"
    return torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=bf16)


def train_row(run: Run, overrides: list[str]) -> dict:
    """Time the training step (forward, loss, backward, SGD) of one composed configuration."""
    cfg = run.config("train", overrides)
    net = build_net(run, cfg).train()
    o = cfg.optim
    optimizer = build_optimizer(net, o.name, o.lr, o.momentum, o.weight_decay, o.classifier_lr_mult)
    image, mask = fixed_batch(run, cfg, cfg.data.crop_size, cfg.data.batch_size)
    losses = []

    def step() -> None:
        with autocast(run, cfg):
            loss = segmentation_loss(net(image), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    run.reset_peak()
    start = time.perf_counter()
    step()  # the first step: cuDNN autotuning, and torch.compile's compilation
    bench._sync(run.device)
    first_s = time.perf_counter() - start
    seconds = run.timed(step)
    finite = bool(torch.isfinite(torch.stack(losses)).all())
    batch, crop = image.shape[0], image.shape[-1]
    return {
        "batch x crop": f"{batch} x {crop}",
        "first step s": f"{first_s:.1f}",
        "s / step": f"{seconds:.3f}",
        "img/s": f"{batch / seconds:.1f}",
        "peak MiB": run.peak_mib(),
        "losses finite": "yes" if finite else "NO",
    }


def train_stage(run: Run) -> None:
    run.report.attempt("loss", "loss check", lambda: loss_check(run))
    for variant, overrides in TRAIN_VARIANTS.items():
        row = run.report.attempt(
            "train", variant, lambda o=overrides: train_row(run, RESNET + ["model.msc=true", *o])
        )
        if row:
            run.report.add("train", {"variant": variant, **row})
    paper = {row.choice: row.paper[SPEED.name] for row in TABLE1.rows}
    for model, paper_speed in paper.items():
        for precision, overrides in PRECISIONS.items():
            row = run.report.attempt(
                "vgg",
                f"{model} {precision}",
                lambda m=model, o=overrides: train_row(run, [f"model={m}", "backbone=vgg16", *o]),
            )
            if row:
                run.report.add(
                    "vgg",
                    {"model": model, "precision": precision, **row, "paper img/s": paper_speed},
                )


def loss_check(run: Run) -> None:
    """The ResNet MSC loss of one fixed batch, same weights, in fp32 and bf16 (no update)."""
    cfg = run.config("train", RESNET + ["model.msc=true"])
    net = build_net(run, cfg).train()
    image, mask = fixed_batch(run, cfg, cfg.data.crop_size, cfg.data.batch_size)
    losses = {}
    for precision, overrides in PRECISIONS.items():
        with torch.no_grad(), autocast(run, run.config("train", overrides)):
            losses[precision] = segmentation_loss(net(image), mask).float().item()
    for precision, loss in losses.items():
        diff = f"{abs(loss - losses['fp32']) / abs(losses['fp32']):.2e}"
        run.report.add(
            "loss",
            {
                "precision": precision,
                "loss": f"{loss:.5f}",
                "finite": "yes" if np.isfinite(loss) else "NO",
                "relative difference to fp32": diff,
            },
        )


def compile_stage(run: Run) -> None:
    try:
        for variant, overrides in COMPILE_VARIANT.items():
            row = train_row(run, RESNET + ["model.msc=true", *overrides])
            run.report.add("train", {"variant": variant, **row})
    finally:
        torch._dynamo.reset()  # drop compiled graphs (also those of an interrupted compile)


def eval_stage(run: Run) -> None:
    size = run.profile.eval_size
    image, _ = bench_crf.make_input(size, size, 21)
    nets = {}  # model.msc -> network, built once (building a ResNet-101 takes seconds)
    for name, overrides in EVAL_ROWS.items():
        row = run.report.attempt("eval", name, lambda o=overrides: eval_row(run, image, o, nets))
        if row:
            precision = "bf16-mixed" if BF16 in overrides else "fp32"
            run.report.add("eval", {"pipeline": name, "precision": precision, **row})


def eval_row(run: Run, image: np.ndarray, overrides: list[str], nets: dict) -> dict:
    """Images/s of evaluate.py's per-image work: wrapped network, scores at full size, CRF (on
    the float32 upsampled scores, DeepLab's unary, as validation feeds it)."""
    if EVAL_CRF in overrides:
        overrides = [*overrides, "crf.backend=torch", f"crf.device={run.device}"]
    cfg = run.config("evaluate", RESNET + overrides)
    if cfg.model.msc not in nets:
        nets[cfg.model.msc] = build_net(run, cfg)
    net = evaluation_network(nets[cfg.model.msc], cfg.data.num_classes, **cfg.tta)
    crf = instantiate(cfg.crf) if cfg.crf else None
    x = normalize(image, cfg.data.mean, cfg.data.std)[None].to(run.device)
    image_t = torch.from_numpy(image).to(run.device)

    def predict() -> torch.Tensor:
        with autocast(run, cfg):
            logits = net(x)
        logits = resize(logits.float(), image.shape[:2])[0]
        if crf is not None:
            return refine_batch(crf, [image_t], [logits], "logits")[0].argmax(0)
        return logits.argmax(0)

    run.reset_peak()
    seconds = run.timed(predict)
    return {
        "input": f"{image.shape[1]}x{image.shape[0]}",
        "ms / image": f"{1000 * seconds:.1f}",
        "img/s": f"{1 / seconds:.2f}",
        "peak MiB": run.peak_mib(),
    }


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
            "conf/evaluate.yaml's network (deeplab.engine.test_time.wrap over `tta`), softmax at "
            "full "
            "size, then `crf=deeplab_resnet101` with the torch backend on the device, then argmax; "
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
        name = f"CPU only: {bench.cpu_name()} (a dry run, not GPU figures)"
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
        f"- CPU (the CRF reference, {REFERENCE}): {bench.cpu_name()}, {os.cpu_count()} cores",
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
            status = f"failed: {_one_line(error)}"
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
