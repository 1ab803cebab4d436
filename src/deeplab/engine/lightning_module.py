"""The LightningModule: DeepLab's loss, optimizer and schedule, and whole-split validation.

Generic over networks: anything mapping an image to logits (or a list of logits with MSC) that
names its `classifier_parameters()` trains here, so FCN-8s and RefineNet plug in unchanged.
"""

import itertools
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from deeplab.crf import save_probabilities
from deeplab.crf.crf_rnn import WithCRFRNN
from deeplab.crf.queue import RefineQueue
from deeplab.data.metrics import confusion_matrix, flatten, scores
from deeplab.data.normalization import denormalize
from deeplab.engine.losses import LAYER_LOSSES, segmentation_loss
from deeplab.engine.optimizer import build_optimizer, build_scheduler
from deeplab.engine.test_time import resize
from deeplab.weights import checkpoint as ckpt


class SegmentationModule(pl.LightningModule):
    """Trains `net` with SGD (or AdamW) + poly/step schedule; validates with one confusion matrix
    per split.

    Args:
        net: the network (any nn.Module with `classifier_parameters()`).
        class_names: one name per class; their count is the class count.
        schedule: factory `schedule(max_steps=...) -> lr multiplier(step)`, e.g. `partial(Poly)`.
        lr, momentum, weight_decay: SGD settings of the plain weights (paper.md §2).
        optimizer: `sgd` (the paper's) or `adamw` (the from-scratch CPU demo); `optim.name`.
        classifier_lr_mult: LR multiplier of the classifier weights (biases: twice it); 10.
        crf: optional `DenseCRF`; used when `use_crf`. It reads the upsampled scores as its unary
            (`kind="logits"`, as DeepLab's C++ does) and refines in the background (crf_workers
            pydensecrf processes) while the network computes the next images.
        crf_workers, crf_chunk: CRF processes; images per torch-backend batch.
        mean, std: the normalization, to recover the RGB image for the CRF and the figures.
        palette: (256, 3) class colours, recorded in checkpoints with the class names.
        keep_samples: how many val images (the first ones) to keep for overlays and figures.
        probs_dir: if set, every val image's upsampled softmax is saved there for offline CRF
            tuning (`deeplab.crf.save_probabilities` .npz: image, probs, mask).
        crf_rnn_lr_mult: LR multiplier of a CRF-RNN layer's parameters (`optim.crf_rnn_lr_mult`).
        net_loss_weight: when `net` ends in a CRF-RNN layer (`WithCRFRNN`), the weight of a second
            loss on the network's own logits (`loss.crf_rnn_aux_weight`; 0: the loss is on
            the layer's full-resolution scores only).
        layer_loss: the loss on a CRF-RNN layer's scores (`loss.crf_rnn_loss`): "cross_entropy"
            or "lovasz_softmax" (`losses.LAYER_LOSSES`).

    With a CRF-RNN layer the validation scores the layer's output (`val/`) and, in the same
    pass, the network's own logits (`val_net/`); the post-hoc CRF refines the network's own
    logits (`val_crf/`), so one metrics.json compares the two CRFs on the same network.
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: list[str],
        schedule=None,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        classifier_lr_mult: float = 10.0,
        crf_rnn_lr_mult: float = 1.0,
        crf=None,
        crf_workers: int = 1,
        crf_chunk: int = 16,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        ignore_index: int = 255,
        keep_samples: int = 0,
        probs_dir=None,
        model_config: dict | None = None,
        run_overrides: list[str] | None = None,
        palette: np.ndarray | None = None,
        net_loss_weight: float = 0.0,
        layer_loss: str = "cross_entropy",
    ):
        super().__init__()
        self.net = net
        self.class_names = list(class_names)
        self.schedule, self.lr, self.momentum, self.weight_decay = (
            schedule,
            lr,
            momentum,
            weight_decay,
        )
        self.optimizer, self.classifier_lr_mult = optimizer, classifier_lr_mult
        self.crf_rnn_lr_mult = crf_rnn_lr_mult
        self.crf, self.crf_workers, self.crf_chunk = crf, crf_workers, crf_chunk
        self.use_crf = False  # the CRF is slow: pipelines switch it on for the final validation
        self.mean, self.std, self.ignore_index = mean, std, ignore_index
        self.keep_samples, self.probs_dir = keep_samples, probs_dir
        self.model_config = model_config  # saved in checkpoints, for override hints on load
        self.run_overrides = run_overrides  # saved in checkpoints: evaluate / predict apply them
        self.palette = palette  # saved in checkpoints with the class names (for exports)
        self.net_loss_weight = net_loss_weight
        self.layer_loss = LAYER_LOSSES[layer_loss]
        self.confusion = confusion_matrix(self.num_classes, ignore_index)
        self.confusion_crf = confusion_matrix(self.num_classes, ignore_index)
        self.confusion_net = confusion_matrix(self.num_classes, ignore_index)  # inside a CRF-RNN
        self.results: dict = {}  # {"val": scores(...), "val_crf": ..., "val_net": ...}
        self.confusions: dict = {}  # the matching K x K confusion matrices (numpy, rows: truth)
        self.samples: dict[str, dict] = {}  # name -> image, truth, pred, crf (uint8 / int arrays)
        self._crf_queue: RefineQueue | None = None
        self._crf_masks: dict = {}  # (index, name) -> truth of the images the CRF refines
        self._crf_index = itertools.count()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def forward(self, image: torch.Tensor):
        return self.net(image)

    # --- training -------------------------------------------------------------------------
    @property
    def crf_rnn(self) -> WithCRFRNN | None:
        """The network when it ends in a CRF-RNN layer (test-time wrappers go inside), else None."""
        return self.net if isinstance(self.net, WithCRFRNN) else None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        if self.crf_rnn is None:
            loss = segmentation_loss(self.net(image), mask, self.ignore_index)
        else:  # the layer's scores are at the crop size: the labels are used as they are
            scores, own = self.crf_rnn.scores_and_net_output(image)
            loss = self.layer_loss(scores, mask, self.ignore_index)
            if self.net_loss_weight:
                own_loss = segmentation_loss(own, mask, self.ignore_index)
                loss = loss + self.net_loss_weight * own_loss
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at step {self.global_step} (images "
                f"{list(batch.get('name', []))}): lower the learning rate (optim.lr) or check "
                "the inputs for NaN/inf."
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["image"]))
        return loss

    def configure_optimizers(self):
        optimizer = build_optimizer(
            self.net,
            self.optimizer,
            self.lr,
            self.momentum,
            self.weight_decay,
            self.classifier_lr_mult,
            self.crf_rnn_lr_mult,
        )
        scheduler = build_scheduler(optimizer, self.schedule, self.trainer.max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # --- validation -----------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self.samples = {}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        mask = batch["mask"]
        if self.crf_rnn is None:
            logits = own_logits = resize(_first(self.net(batch["image"])), mask.shape[-2:])
        else:  # own_logits: the network's, which the post-hoc CRF refines
            scores, own = self.crf_rnn.scores_and_net_output(batch["image"])
            logits, own_logits = (resize(x, mask.shape[-2:]) for x in (scores, _first(own)))
            self.confusion_net.update(own_logits.argmax(1), mask)
        pred = logits.argmax(1)
        self.confusion.update(pred, mask)
        names = list(batch.get("name", [f"{batch_idx}_{i}" for i in range(len(mask))]))
        keep = not self.trainer.sanity_checking and len(self.samples) < self.keep_samples
        crf = self.use_crf and self.crf is not None
        if not (keep or crf or self.probs_dir):
            return {"pred": pred}
        rgbs = [self._rgb(img) for img in batch["image"]]
        for name, rgb, truth, p in zip(names, rgbs, mask, pred, strict=True):
            if keep and len(self.samples) < self.keep_samples:
                self.samples[name] = {"image": rgb, "truth": _np(truth), "pred": _np(p)}
        if self.probs_dir:
            probs = own_logits.float().softmax(1).cpu().numpy()
            for name, rgb, prob, truth in zip(names, rgbs, probs, mask, strict=True):
                save_probabilities(Path(self.probs_dir) / name, rgb, prob, truth)
        if crf:
            if self._crf_queue is None:
                self._crf_queue = RefineQueue(
                    self.crf, self.crf_workers, self.crf_chunk, kind="logits"
                )
            for name, rgb, scores, truth in zip(names, rgbs, own_logits.float(), mask, strict=True):
                key = (next(self._crf_index), name)  # unique even if names repeat
                self._crf_masks[key] = truth
                self._count_crf(self._crf_queue.put(key, rgb, scores))
        return {"pred": pred}

    def _rgb(self, image: torch.Tensor) -> np.ndarray:
        return denormalize(image.detach().float().cpu(), self.mean, self.std)

    def _count_crf(self, refined: list[tuple]) -> None:
        """Count refined maps (in any order) into the CRF confusion matrix."""
        for key, q in refined:
            name, mask = key[1], self._crf_masks.pop(key)
            q = q if isinstance(q, torch.Tensor) else torch.from_numpy(q)
            pred = q.argmax(0).to(mask.device)
            self.confusion_crf.update(pred[None], mask[None])
            if name in self.samples:
                self.samples[name]["crf"] = _np(pred)

    def _flush_crf(self) -> None:
        """Wait for the CRF to finish every queued image and count the results."""
        if self._crf_queue is not None:
            queue, self._crf_queue = self._crf_queue, None
            self._count_crf(queue.drain())

    def on_validation_epoch_end(self) -> None:
        self._flush_crf()
        matrices = {"val": self.confusion}
        if self.use_crf and self.crf is not None:
            matrices["val_crf"] = self.confusion_crf
        if self.crf_rnn is not None:
            matrices["val_net"] = self.confusion_net
        self.confusions = {k: m.compute().cpu().numpy() for k, m in matrices.items()}
        self.results = {
            k: scores(torch.as_tensor(c), self.class_names) for k, c in self.confusions.items()
        }
        for matrix in matrices.values():
            matrix.reset()
        flat = {k: v for prefix, r in self.results.items() for k, v in flatten(prefix, r).items()}
        self.log("val/mIoU", flat.pop("val/mIoU"), prog_bar=True)
        self.log_dict(flat)

    # --- checkpoints ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["deeplab"] = ckpt.checkpoint_record(
            self.net,
            self.num_classes,
            self.mean,
            self.std,
            self.model_config,
            self.run_overrides,
            self.class_names,
            self.palette,
        )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        source = self._trainer.ckpt_path if self._trainer is not None else "the checkpoint"
        ckpt.checked_state(
            checkpoint,
            self.net,
            self.num_classes,
            self.mean,
            self.std,
            self.model_config,
            source,
            training=True,
        )


def _first(logits):
    """An MSC network's fused logits (its first output in training mode), else the logits."""
    return logits[0] if isinstance(logits, list | tuple) else logits


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.uint8)
