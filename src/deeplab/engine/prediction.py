"""What `predict.py` does, as a function: a trained network over a folder of images, palette
PNG masks and overlays out; unreadable inputs are named, never silently left out."""

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from deeplab.data.images import IMAGE_SUFFIXES, read_rgb
from deeplab.data.normalization import normalize
from deeplab.engine import visuals
from deeplab.engine.pipeline import check_run_config, recorded_data, trained_data, trained_network
from deeplab.engine.test_time import evaluation_network, probabilities
from deeplab.runtime.atomic import check_writable
from deeplab.runtime.config import instantiate
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.runtime.progress import track


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
            f"input={path} is neither an image nor a folder holding {list(IMAGE_SUFFIXES)} files"
        )
    others = {
        p: f"{p} is not read: its suffix is not one of {list(IMAGE_SUFFIXES)}"
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
    out = check_writable(cfg.get("output_dir") or run_dir, "output_dir")
    files, skipped = image_files(cfg.input)
    names = output_names(files)
    recorded = recorded_data(cfg)  # before the checks: it sets the class count of a folder set
    check_run_config(cfg, with_data=recorded is None)
    # class count, palette, normalization only: the checkpoint's, else the data set's
    datamodule = recorded or trained_data(cfg)
    device = torch.device(
        cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    )
    net = trained_network(cfg, datamodule)
    net = evaluation_network(net, datamodule.num_classes, **cfg.tta).to(device)
    # A CRF-RNN layer is the network's last step; its crf config only set up its kernels.
    crf = instantiate(cfg.crf) if cfg.get("crf") and not cfg.get("crf_rnn") else None
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
