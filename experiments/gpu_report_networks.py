"""The GPU report's network stages: `train` (ResNet-101 ASPP-L with MSC, Table 1's VGG-16 rows,
the fixed-batch loss), `compile` and `eval` (experiments/gpu_report.py)."""

import time

import bench_crf
import numpy as np
import timing
import torch
from gpu_report_core import Run, refine_batch
from hydra.utils import instantiate

from deeplab.data.normalization import normalize
from deeplab.engine import speed
from deeplab.engine.losses import segmentation_loss
from deeplab.engine.optimizer import build_optimizer
from deeplab.engine.test_time import evaluation_network, resize
from deeplab.tables.paper import SPEED, TABLE1

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
    timing.sync(run.device)
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
