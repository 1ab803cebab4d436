"""What `train.py`, `evaluate.py` and `predict.py` do, as functions that tests and notebooks call.

Each takes the composed Hydra config and the run directory, and returns what it measured.
"""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from deeplab.crf.crf_rnn import CRFRNN, WithCRFRNN, checkpoint_holds_layer
from deeplab.data.images import read_rgb
from deeplab.data.normalization import normalize
from deeplab.engine import speed, visuals
from deeplab.engine.callbacks import EpochSeed, Throughput, ValOverlays, log_images, progress_bar
from deeplab.engine.checkpoint_io import AtomicCheckpointIO
from deeplab.engine.lightning_module import SegmentationModule
from deeplab.engine.loggers import build_loggers
from deeplab.engine.results import as_metrics, print_table, write_metrics
from deeplab.engine.test_time import probabilities, wrap
from deeplab.runtime.atomic import check_writable
from deeplab.runtime.config import instantiate, network_config
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.runtime.progress import track
from deeplab.runtime.signals import SaveOnSigterm, exit_143_on_sigterm, exit_on_sigterm, resume_from
from deeplab.runtime.wandb_runs import log_final_metrics
from deeplab.weights import conventions
from deeplab.weights.checkpoint import (
    check_readable,
    checked_state,
    network_state,
    read_checkpoint,
)
from deeplab.weights.checkpoint_overrides import run_overrides

# What predict.py reads from a folder: every format `read_rgb` decodes (other files are listed)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def check_run_config(cfg: DictConfig) -> None:
    """Start-up checks, before anything runs: the config values (runtime.config_checks), then
    the rules the components own, by building the cheap ones (the CRF checks its parameters)."""
    check_config(cfg)
    if cfg.get("crf"):
        instantiate(cfg.crf)


def model_config(cfg: DictConfig) -> dict:
    """The resolved `model` config, as checkpoints record it."""
    return OmegaConf.to_container(cfg.model, resolve=True)


def build_network(cfg: DictConfig, datamodule) -> torch.nn.Module:
    """The network `cfg.model` builds (its builder never sees the `crf_rnn*` keys), with the
    run's speed options when it has them; `model.crf_rnn=true` puts a CRF-RNN layer after it
    (`deeplab.crf.WithCRFRNN`) whose kernels and initial weights are `cfg.crf`'s."""
    net = instantiate(network_config(cfg.model))
    if cfg.get("speed") is not None:
        net = speed.apply(net, cfg.speed)
    if not cfg.model.get("crf_rnn"):
        return net
    if not cfg.get("crf"):
        raise UserError(
            "model.crf_rnn=true takes its kernel widths and initial weights from a CRF config, "
            "and crf is none: add crf=deeplab_vgg16 (VOC, VGG-16), crf=deeplab_resnet101 or "
            "crf=synthetic (the 128-px synthetic set)"
        )
    kernel_weights = cfg.model.get("crf_rnn_kernel_weights", "scalar")
    layer = CRFRNN.like(instantiate(cfg.crf), datamodule.num_classes, kernel_weights=kernel_weights)
    return WithCRFRNN(
        net,
        layer,
        datamodule.mean,
        datamodule.std,
        cfg.model.crf_rnn_iterations,
        cfg.model.crf_rnn_test_iterations,
        cfg.model.crf_rnn_lr_mult,
    )


def load_weights(net, path, key: str, cfg: DictConfig, datamodule) -> torch.nn.Module:
    """A checkpoint's network weights loaded into `net` once they fit it and this run (class
    count, model config, input normalization); `key` is the setting that names the file.

    A checkpoint without a CRF-RNN layer (stage 1) loads into the network inside one, which keeps
    its Potts start: stage 2 starts from it, and evaluating it shows the untrained layer."""
    checkpoint = read_checkpoint(path, key)
    holds_layer = isinstance(checkpoint, dict) and checkpoint_holds_layer(network_state(checkpoint))
    if holds_layer and not isinstance(net, WithCRFRNN):
        raise UserError(
            f"{key}={path} holds a network trained with a CRF-RNN layer: pass "
            "model.crf_rnn=true (its checkpoint overrides set it unless the command line says "
            "otherwise), or evaluate the network alone from val_net/ in its metrics.json"
        )
    target = net.net if isinstance(net, WithCRFRNN) and not holds_layer else net
    mean, std = datamodule.mean, datamodule.std
    state = checked_state(
        checkpoint, target, datamodule.num_classes, mean, std, model_config(cfg), path
    )
    target.load_state_dict(state)
    return net


def trained_network(cfg: DictConfig, datamodule) -> torch.nn.Module:
    """`build_network` with the weights of `cfg.ckpt_path` (`load_weights`: a mismatch names the
    overrides that fix it)."""
    return load_weights(build_network(cfg, datamodule), cfg.ckpt_path, "ckpt_path", cfg, datamodule)


def rebuild_overrides(cfg: DictConfig) -> list[str]:
    """What this run's checkpoints record so that evaluate / predict need only their path: the
    resolved model and data configs, the data root made absolute (runs start anywhere)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    # A CRF-RNN layer takes its kernel widths from the crf config: it travels too.
    crf = OmegaConf.to_container(cfg.crf, resolve=True) if cfg.model.get("crf_rnn") else None
    return run_overrides(model_config(cfg), data, choices, crf)


def build_module(cfg: DictConfig, datamodule, net: torch.nn.Module, **kwargs) -> SegmentationModule:
    """The LightningModule for `net` with the run's optimizer, schedule and CRF settings."""
    crf = instantiate(cfg.crf) if cfg.get("crf") else None
    optim = dict(cfg.get("optim") or {})
    optim["optimizer"] = optim.pop("name", "sgd")
    return SegmentationModule(
        net,
        datamodule.class_names,
        schedule=instantiate(cfg.schedule) if cfg.get("schedule") else None,
        crf=crf,
        crf_workers=cfg.get("crf_workers", 1),
        mean=datamodule.mean,
        std=datamodule.std,
        ignore_index=datamodule.ignore_index,
        keep_samples=cfg.get("val_samples", 0),
        model_config=model_config(cfg),
        run_overrides=rebuild_overrides(cfg),
        palette=datamodule.palette,
        net_loss_weight=cfg.model.get("crf_rnn_aux_loss_weight", 0.0),
        **optim,
        **kwargs,
    )


def train(cfg: DictConfig, run_dir: str | Path, callbacks: list | None = None) -> dict:
    """Fit, validate the final weights on the whole val split (with `cfg.tta` and the CRF if
    set), save results.

    `callbacks` are added to the standard ones (checkpoints, reseeding, throughput, overlays).
    """
    check_run_config(cfg)
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = resume_from(cfg.get("ckpt_path"), last)  # `auto`: this run folder's last.ckpt
    if resume:  # Lightning reads it, late and in torch's words: name it first
        check_readable(resume)
    conventions.check_run(cfg)  # before anything is built: the weights' input convention
    pl.seed_everything(cfg.seed, workers=True)
    if "split_dir" in cfg.data and cfg.data.split_dir is None:  # data=folder: the run keeps
        cfg.data.split_dir = str(Path(run_dir).resolve() / "splits")  # its split (checkpoints too)
    datamodule = instantiate(cfg.data)
    net = build_network(cfg, datamodule)
    if cfg.get("init_from_checkpoint"):  # stage 2 of CRF-RNN training, or any fine-tuning
        load_weights(net, cfg.init_from_checkpoint, "init_from_checkpoint", cfg, datamodule)
    module = build_module(cfg, datamodule, net)
    loggers = build_loggers(cfg.get("logger"), run_dir, "train")
    throughput = Throughput()
    stop = SaveOnSigterm(last)
    callbacks = (
        list(callbacks or [])
        + [
            *checkpoints(run_dir / "checkpoints"),
            stop,
            EpochSeed(cfg.seed),
            throughput,
            ValOverlays(datamodule.palette),
            progress_bar(),
        ]
        + ([LearningRateMonitor(logging_interval="step")] if loggers else [])
    )
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()],
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    with exit_on_sigterm(trainer, stop):
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        # max_steps need not end on a validation: make last.ckpt the weights metrics.json scores.
        trainer.save_checkpoint(last, weights_only=False)  # resumable

        trainer.limit_val_batches = 1.0  # the final numbers always cover the whole split
        module.net = wrap(module.net, datamodule.num_classes, **cfg.get("tta", {}))
        metrics = validate_whole_split(trainer, module, datamodule)
    metrics["params"] = sum(p.numel() for p in net.parameters())
    metrics["train_img_per_s"] = throughput.img_per_s
    finish(trainer, module, datamodule, metrics, run_dir)
    return metrics


def checkpoints(dirpath: Path) -> list[ModelCheckpoint]:
    """`last.ckpt` after every validation (to resume) and `best-step<N>.ckpt` by val/mIoU.

    Both save after validation, never at a train-epoch end, so every checkpoint has its val/mIoU.
    """
    common = dict(dirpath=dirpath, save_on_train_epoch_end=False, enable_version_counter=False)
    return [
        ModelCheckpoint(filename="last", **common),
        ModelCheckpoint(
            filename="best-step{step}",
            monitor="val/mIoU",
            mode="max",
            auto_insert_metric_name=False,
            **common,
        ),
    ]


def validate_whole_split(trainer: pl.Trainer, module: SegmentationModule, datamodule) -> dict:
    """One pass over the val split; the CRF (when configured) refines the same predictions."""
    module.use_crf = module.crf is not None
    trainer.validate(module, datamodule=datamodule, verbose=False)
    return as_metrics(module.results)


def finish(trainer: pl.Trainer, module: SegmentationModule, datamodule, metrics, run_dir) -> None:
    """Rank 0 writes metrics.json, kept predictions, the figure and the confusion matrix."""
    if not trainer.is_global_zero:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(run_dir / "metrics.json", metrics)
    save_samples(module.samples, datamodule.palette, run_dir)
    key = "val_crf" if "val_crf" in module.confusions else "val"
    confusion = visuals.figure_array(
        visuals.confusion_figure(module.confusions[key], module.class_names)
    )
    visuals.save_rgb(run_dir / "confusion.png", confusion)
    log_images(trainer.loggers, f"{key}/confusion", [confusion], [key], trainer.global_step)
    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            log_final_metrics(logger.experiment, metrics)
            logger.experiment.finish()
    print_table(metrics)


def save_samples(samples: dict, palette: np.ndarray, run_dir: Path) -> None:
    """Palette PNGs of the kept val predictions and the image | truth | prediction | CRF figure."""
    if not samples:
        return
    out = run_dir / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    for name, sample in samples.items():
        visuals.save_mask(out / f"{name}.png", sample["pred"], palette)
        if "crf" in sample:
            visuals.save_mask(out / f"{name}_crf.png", sample["crf"], palette)
    fig = visuals.comparison_figure(samples, palette)
    visuals.save_figure(run_dir / "figure.png", fig, dpi=100)


def evaluate(cfg: DictConfig, run_dir: str | Path, callbacks: list | None = None) -> dict:
    """Score a checkpoint on the val split (test-time options in cfg.tta), save metrics.json."""
    check_run_config(cfg)
    if cfg.get("save_probs"):  # before the network runs over the whole split
        check_writable(cfg.save_probs, "save_probs")
    run_dir = Path(run_dir)
    datamodule = instantiate(cfg.data)
    net = wrap(trained_network(cfg, datamodule), datamodule.num_classes, **cfg.tta)
    module = build_module(cfg, datamodule, net, probs_dir=cfg.get("save_probs"))
    loggers = build_loggers(cfg.get("logger"), run_dir, "evaluate", str(cfg.ckpt_path))
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[*(callbacks or []), progress_bar()],
        default_root_dir=str(run_dir),
    )
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    with exit_143_on_sigterm("the evaluation"):
        metrics = validate_whole_split(trainer, module, datamodule)
    metrics["checkpoint"] = str(cfg.ckpt_path)
    finish(trainer, module, datamodule, metrics, run_dir)
    return metrics


def image_files(path: str | Path) -> tuple[list[Path], dict[Path, str]]:
    """One image, or every image in a folder (sorted), and why each other file of the folder is
    not read (so that none is skipped unsaid); a clear error when there is no image."""
    path = Path(path)
    if path.is_file():
        return [path], {}
    found = sorted(p for p in path.glob("*") if p.is_file())
    files = [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise MissingFileError(
            f"input={path} is neither an image nor a folder holding {sorted(IMAGE_SUFFIXES)} files"
        )
    others = {
        p: f"{p} is not read: its suffix is not one of {sorted(IMAGE_SUFFIXES)}"
        for p in found
        if p not in files
    }
    return files, others


def output_names(files: list[Path]) -> dict[Path, str]:
    """The output name (no suffix) of each input: its stem, or `<stem>_<suffix>` for inputs that
    share a stem (`x.jpg`, `x.png` -> `x_jpg`, `x_png`), so that no mask overwrites another."""
    stems = Counter(p.stem for p in files)
    names = {p: p.stem if stems[p.stem] == 1 else f"{p.stem}_{p.suffix[1:]}" for p in files}
    counts = Counter(names.values())
    clashes = sorted(str(p) for p in files if counts[names[p]] > 1)
    if clashes:
        raise UserError(f"{', '.join(clashes)} would all be written as the same mask: rename one")
    return names


class SkippedImages(UserError):
    """Some inputs could not be read: they were skipped, every other mask was written."""

    def __init__(self, reasons: dict[Path, str], written: list[Path], out: Path):
        self.skipped, self.written = list(reasons), written
        super().__init__(
            f"{len(reasons)} of {len(reasons) + len(written)} images could not be read and were "
            f"skipped ({len(written)} masks written to {out}):\n  " + "\n  ".join(reasons.values())
        )


@torch.no_grad()
def predict(cfg: DictConfig, run_dir: str | Path) -> list[Path]:
    """Images -> `masks/<name>.png` (palette PNG) and `overlays/<name>.jpg` under the output dir,
    `<name>` from `output_names`. An unreadable image, or one above `data.max_pixels`, is skipped
    (named on stderr) and the others are still done; then SkippedImages lists them with the
    folder's files that are not images. Returns the masks written."""
    check_run_config(cfg)
    out = check_writable(cfg.get("output_dir") or run_dir, "output_dir")
    files, skipped = image_files(cfg.input)
    names = output_names(files)
    datamodule = instantiate(cfg.data)  # class count, palette, normalization only
    device = torch.device(
        cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    net = trained_network(cfg, datamodule)
    net = wrap(net, datamodule.num_classes, **cfg.tta).to(device)
    # A CRF-RNN layer is the network's last step; its crf config only set up its kernels.
    crf = instantiate(cfg.crf) if cfg.get("crf") and not cfg.model.get("crf_rnn") else None
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    written = []
    for path in track(files, "predicting", unit="images"):
        try:
            rgb = read_rgb(path, datamodule.max_pixels)
        except UserError as err:
            print(f"skipped: {err}", file=sys.stderr)
            skipped[path] = str(err)
            continue
        image = normalize(rgb, datamodule.mean, datamodule.std)[None].to(device)
        probs = probabilities(net, image, rgb.shape[:2])[0].cpu().numpy()
        if crf is not None:
            probs = crf(rgb, probs)
        mask = np.asarray(probs).argmax(0)
        name = names[path]
        visuals.save_mask(out / "masks" / f"{name}.png", mask, datamodule.palette)
        visuals.save_rgb(
            out / "overlays" / f"{name}.jpg", visuals.overlay(rgb, mask, datamodule.palette)
        )
        written.append(out / "masks" / f"{name}.png")
    if skipped:
        raise SkippedImages(skipped, written, out / "masks")
    return written
