"""Training callbacks: per-epoch reseeding (exact resume), throughput, val mask overlays, and
the progress bar."""

import random
import time

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar

from deeplab.visuals import side_by_side


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
