"""Training callbacks: per-epoch reseeding (exact resume), throughput, val mask overlays, and
the progress display (a live bar in a terminal, plain lines in logs)."""

import math
import random
import sys
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.callbacks.progress import ProgressBar as ProgressBarBase

from deeplab.engine.visuals import side_by_side
from deeplab.runtime.progress import Progress


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, with "Epoch 5" instead of "Epoch 5/-2" in iteration-based runs.

    Runs stop at `trainer.max_steps` with `max_epochs=-1` (no epoch limit), which pytorch-lightning
    <= 2.6.6 prints as a total of -2 (Lightning issue #21925, fixed upstream by PR #21924; drop this
    class once a release with the fix is required).
    """

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:
            return f"Epoch {current_epoch}".ljust(len(self.validation_description))
        return super()._get_train_description(current_epoch)


class LogProgress(ProgressBarBase):
    """Training and validation progress for logs (SLURM, CI, a pipe), as runtime.progress's
    plain lines: steps done / max_steps, rate, time left and the loss, every 10 % or
    `interval` seconds. A live bar there would only print when an epoch ends, or fill the log
    with control characters."""

    def __init__(self, interval: float = 30.0):
        super().__init__()
        self.interval, self.enabled = interval, True
        self._train: Progress | None = None
        self._val: Progress | None = None

    def disable(self) -> None:  # Lightning disables the bar on ranks other than 0
        self.enabled = False

    def enable(self) -> None:
        self.enabled = True

    def _open(self, description: str, total, unit: str, completed: float = 0) -> Progress | None:
        if not self.enabled:
            return None
        total = total if total and math.isfinite(total) and total > 0 else None
        return Progress(description, total, unit, completed, self.interval).__enter__()

    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        total = trainer.max_steps if trainer.max_steps > 0 else None
        self._train = self._open("training", total, "steps", trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, idx) -> None:
        if self._train is None or trainer.global_step <= self._train.completed:
            return  # accumulating gradients: no optimizer step yet
        loss = trainer.callback_metrics.get("train/loss")
        info = f"loss {float(loss):.4f}" if loss is not None else None
        self._train.advance(trainer.global_step - self._train.completed, info)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._train is not None:
            self._train.__exit__(None, None, None)
            self._train = None

    def on_validation_start(self, trainer: pl.Trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val = self._open("validation", self.total_val_batches, "batches")

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module, *args) -> None:
        if self._val is not None:
            self._val.advance()

    def on_validation_end(self, trainer: pl.Trainer, pl_module) -> None:
        if self._val is not None:
            self._val.__exit__(None, None, None)
            self._val = None


def progress_bar() -> ProgressBarBase:
    """Lightning's rich bar when its output (stdout) is a terminal, plain lines otherwise."""
    return ProgressBar() if sys.stdout.isatty() else LogProgress()


class EpochSeed(pl.Callback):
    """Reseed every RNG at each epoch start from (seed, epoch, rank).

    The shuffling order, the worker seeds and the augmentation and dropout draws of an epoch then
    depend only on the epoch, so a run resumed from an end-of-epoch checkpoint replays exactly what
    the uninterrupted run would have done. (Persistent workers keep their own RNG state across
    epochs; exact resume needs `data.num_workers=0` or `data.persistent_workers=false`.)
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        seed = (self.seed * 1_000_003 + trainer.current_epoch * 1009 + trainer.global_rank) % 2**32
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class Throughput(pl.Callback):
    """Training images per second, timed over whole training steps (forward, backward, update).

    The first `warmup` batches (allocator and kernel warm-up) are left out when there are more.
    """

    def __init__(self, warmup: int = 1):
        self.warmup = warmup
        self.steps: list[tuple[int, float]] = []  # (images, seconds) per training batch
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        images = len(batch["image"]) * trainer.world_size
        self.steps.append((images, time.perf_counter() - self._start))

    @property
    def img_per_s(self) -> float:
        steps = self.steps[self.warmup :] if len(self.steps) > self.warmup else self.steps
        seconds = sum(s for _, s in steps)
        return sum(n for n, _ in steps) / seconds if seconds else 0.0


class ValOverlays(pl.Callback):
    """Log image | truth | prediction (| CRF) rows of the module's kept val samples to the loggers.

    The module keeps the first `keep_samples` val images, so the same images are shown at every
    validation. Loggers without images (CSV) are skipped.
    """

    def __init__(self, palette: np.ndarray, key: str = "val/overlays"):
        self.palette, self.key = palette, key

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.samples:
            return
        rows = [side_by_side(s, self.palette) for s in pl_module.samples.values()]
        log_images(trainer.loggers, self.key, rows, list(pl_module.samples), trainer.global_step)


def log_images(loggers, key: str, images: list[np.ndarray], captions: list[str], step: int) -> None:
    """Send uint8 (H, W, 3) images to every logger that takes images (W&B, TensorBoard)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            logger.log_image(key=key, images=images, caption=captions, step=step)
        elif isinstance(logger, pl.loggers.TensorBoardLogger):
            for caption, image in zip(captions, images, strict=True):
                logger.experiment.add_image(f"{key}/{caption}", image, step, dataformats="HWC")
