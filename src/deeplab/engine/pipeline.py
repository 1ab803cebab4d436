"""What `train.py` and `evaluate.py` do, as functions that tests and notebooks call, and what
they share with prediction (`engine/prediction.py`): start-up checks, the network, its weights.

Each takes the composed Hydra config and the run directory, and returns what it measured.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

from deeplab.crf.crf_rnn import CRFRNN, KERNEL_KEYS, WithCRFRNN, checkpoint_holds_layer
from deeplab.data.classes import voc_palette
from deeplab.data.images import MAX_PIXELS
from deeplab.engine import speed, visuals
from deeplab.engine.callbacks import EpochSeed, Throughput, ValOverlays, log_images, progress_bar
from deeplab.engine.checkpoint_io import AtomicCheckpointIO
from deeplab.engine.lightning_module import SegmentationModule
from deeplab.engine.loggers import build_loggers
from deeplab.engine.results import as_metrics, check_own_run_dir, print_table, write_metrics
from deeplab.engine.test_time import evaluation_network
from deeplab.runtime.atomic import check_writable
from deeplab.runtime.config import instantiate
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import UserError
from deeplab.runtime.signals import SaveOnSigterm, exit_143_on_sigterm, exit_on_sigterm, resume_from
from deeplab.runtime.wandb_runs import log_final_metrics
from deeplab.weights import conventions
from deeplab.weights.checkpoint import (
    check_class_list,
    check_classes,
    check_crf_kernels,
    check_normalization,
    check_readable,
    checked_state,
    network_state,
    read_checkpoint,
    read_record,
)
from deeplab.weights.checkpoint_overrides import recorded_split_dir, run_overrides


def check_run_config(cfg: DictConfig, with_data: bool = True) -> None:
    """Start-up checks, before anything runs or reads a weight file: the values no component
    owns (`runtime.config_checks`), then the parts that own the others, built cheaply so that
    each refuses a bad value with its own message: the data module, the network (on the meta
    device, without its weight files) with the speed options, the CRF and the CRF-RNN layer.
    `with_data=False`: a run that takes its data set from a checkpoint's record (predict)."""
    check_config(cfg)
    if with_data and cfg.get("data"):
        instantiate(cfg.data)
    if cfg.get("model"):
        model = OmegaConf.to_container(cfg.model, resolve=True)
        model["backbone"] = {**(model.get("backbone") or {}), "pretrained": None}
        if "init_from" in model:
            model["init_from"] = None
        with torch.device("meta"):
            net = instantiate(model)
        speed.apply_speed_options(net, cfg.get("speed"))
    if cfg.get("crf"):
        instantiate(cfg.crf)
    if cfg.get("crf_rnn"):
        crf_rnn_layer(cfg)


def model_config(cfg: DictConfig) -> dict:
    """The resolved `model` config, as checkpoints record it."""
    return OmegaConf.to_container(cfg.model, resolve=True)


def build_network(cfg: DictConfig, datamodule) -> torch.nn.Module:
    """The network `cfg.model` builds (design.md I3), with the run's speed options when it has
    them; `crf_rnn=on` puts the layer `cfg.crf_rnn` builds after it (`deeplab.crf.WithCRFRNN`),
    its kernels and starting weights `cfg.crf`'s."""
    net = instantiate(cfg.model)
    if cfg.get("speed") is not None:
        net = speed.apply_speed_options(net, cfg.speed)
    if cfg.get("crf_rnn") is None:
        return net
    return WithCRFRNN(net, crf_rnn_layer(cfg), datamodule.mean, datamodule.std)


def crf_rnn_layer(cfg: DictConfig) -> CRFRNN:
    """The CRF-RNN layer `cfg.crf_rnn` builds, once there is a `crf` config to take its kernel
    widths and initial weights from."""
    if not cfg.get("crf"):
        raise UserError(
            "crf_rnn=on takes its kernel widths and initial weights from a CRF config, "
            "and crf is none: add crf=deeplab_vgg16 (VOC, VGG-16), crf=deeplab_resnet101 or "
            "crf=synthetic (the 128-px synthetic set)"
        )
    if "_target_" not in cfg.crf_rnn:  # keys merged over crf_rnn=none, e.g. by an experiment
        keys = ", ".join(f"crf_rnn.{k}" for k in cfg.crf_rnn)
        raise UserError(
            f"{keys} set, but no CRF-RNN layer is chosen (crf_rnn=none): add crf_rnn=on, or "
            "set the layer's keys in a conf/crf_rnn option instead (as crf_rnn=stage2 does)"
        )
    return instantiate(cfg.crf_rnn)


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
            "crf_rnn=on (its checkpoint overrides set it unless the command line says "
            "otherwise), or evaluate the network alone from val_net/ in its metrics.json"
        )
    target = net.net if isinstance(net, WithCRFRNN) and not holds_layer else net
    mean, std = datamodule.mean, datamodule.std
    state = checked_state(
        checkpoint, target, datamodule.num_classes, mean, std, model_config(cfg), path
    )
    meta = checkpoint.get("deeplab") if isinstance(checkpoint, dict) else None
    check_class_list(meta, datamodule.class_names, datamodule.palette, path)
    if holds_layer and meta:
        crf = OmegaConf.to_container(cfg.crf, resolve=True)
        kernels = {k: v for k, v in crf.items() if k in KERNEL_KEYS}
        check_crf_kernels(meta.get("overrides"), kernels, path)
    target.load_state_dict(state)
    return net


def trained_data(cfg: DictConfig):
    """The data set of a trained network (evaluate, predict): its split is read back as the
    training recorded it, never drawn again (`data.split_dir`, docs/own-data.md)."""
    if "split_dir" in cfg.data:
        return instantiate(cfg.data, draw_split=False)
    return instantiate(cfg.data)


@dataclass(frozen=True)
class RecordedData:
    """What predict takes from a data set, as the checkpoint recorded it: a trained network is
    predicted with the classes, colours and normalisation it was trained with, and needs no
    data folder (a data=folder checkpoint on a machine without the training data)."""

    class_names: list[str]
    palette: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_pixels: int | None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def recorded_data(cfg: DictConfig) -> RecordedData | None:
    """The checkpoint's record of its data set, when it holds classes and normalisation; the
    run's `data.num_classes` is set from it (a folder data set would read classes.txt). A data
    set of another class count or normalisation on the command line is refused by name."""
    record = read_record(cfg.ckpt_path)
    if not record or "classes" not in record or "normalization" not in record:
        return None
    names = [str(n) for n in record["classes"]["names"]]
    try:
        configured = cfg.data.num_classes
    except UserError:  # a folder data set whose classes.txt is not here: the record has them
        configured = None
    if configured is not None:
        check_classes(record, configured, cfg.ckpt_path)
    check_normalization(record, cfg.data.mean, cfg.data.std, cfg.ckpt_path)
    with open_dict(cfg):
        cfg.data.num_classes = len(names)
    palette = voc_palette()
    palette[: len(names)] = np.asarray(record["classes"]["colours"], dtype=np.uint8)
    norm = record["normalization"]
    max_pixels = cfg.data.get("max_pixels", MAX_PIXELS)
    return RecordedData(names, palette, tuple(norm["mean"]), tuple(norm["std"]), max_pixels)


def trained_network(cfg: DictConfig, datamodule) -> torch.nn.Module:
    """`build_network` with the weights of `cfg.ckpt_path` (`load_weights`: a mismatch names the
    overrides that fix it)."""
    return load_weights(build_network(cfg, datamodule), cfg.ckpt_path, "ckpt_path", cfg, datamodule)


def rebuild_overrides(cfg: DictConfig, run_dir: Path | None = None) -> list[str]:
    """What this run's checkpoints record so that evaluate / predict need only their path: the
    resolved model and data configs, the data root made absolute (runs start anywhere), a split
    folder inside the run relative to it (`recorded_split_dir`: the run may move)."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    if data.get("root"):
        data["root"] = str(Path(data["root"]).expanduser().resolve())
    if data.get("split_dir") and run_dir is not None:
        data["split_dir"] = recorded_split_dir(data["split_dir"], run_dir)
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    if cfg.get("crf_rnn") is None:
        return run_overrides(model_config(cfg), data, choices)
    # A CRF-RNN layer takes its kernel widths from the crf config: it travels too, with the
    # layer's own values (its iteration counts; the rest are the crf config's).
    crf = OmegaConf.to_container(cfg.crf, resolve=True)
    layer = {k: v for k, v in cfg.crf_rnn.items() if not OmegaConf.is_interpolation(cfg.crf_rnn, k)}
    return run_overrides(model_config(cfg), data, choices, crf, layer)


def build_module(
    cfg: DictConfig, datamodule, net: torch.nn.Module, run_dir: Path | None = None, **kwargs
) -> SegmentationModule:
    """The LightningModule for `net` with the run's optimizer, schedule and CRF settings;
    `run_dir`: a training's, which its checkpoints' record refers to."""
    crf = instantiate(cfg.crf) if cfg.get("crf") else None
    optim = dict(cfg.get("optim") or {})
    optim["optimizer"] = optim.pop("name", "sgd")
    loss = cfg.get("loss") or {}
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
        run_overrides=rebuild_overrides(cfg, run_dir),
        palette=datamodule.palette,
        net_loss_weight=loss.get("crf_rnn_aux_weight", 0.0),
        layer_loss=loss.get("crf_rnn_loss", "cross_entropy"),
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
    module = build_module(cfg, datamodule, net, run_dir)
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
        module.net = evaluation_network(module.net, datamodule.num_classes, **cfg.get("tta", {}))
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
    check_own_run_dir(run_dir, cfg.ckpt_path)
    datamodule = trained_data(cfg)
    net = evaluation_network(trained_network(cfg, datamodule), datamodule.num_classes, **cfg.tta)
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
