"""Pictures of predictions: palette masks, colour overlays, comparison grid, confusion matrix."""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from deeplab.runtime.atomic import written_atomically


def new_figure(**kwargs) -> Figure:
    """A figure drawn by Agg, outside pyplot: no display needed on training machines, nothing to
    close, and the global backend is left alone (notebooks keep their inline plots)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def colorize(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; 255 (ignore) takes the palette's entry 255."""
    return np.asarray(palette, dtype=np.uint8)[np.asarray(mask, dtype=np.uint8)]


def overlay(
    rgb: np.ndarray, mask: np.ndarray, palette: np.ndarray, alpha: float = 0.5
) -> np.ndarray:
    """Blend the mask colours over the image; background (0) and ignore (255) stay uncoloured."""
    mask = np.asarray(mask)
    blend = (1 - alpha) * rgb + alpha * colorize(mask, palette)
    keep = (mask == 0) | (mask == 255)
    return np.where(keep[..., None], rgb, blend).round().astype(np.uint8)


def save_mask(path: Path, mask: np.ndarray, palette: np.ndarray) -> None:
    """A palette PNG (mode P) as VOC stores its labels: pixel values are the class ids."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())
    save_image(path, image)


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    save_image(path, Image.fromarray(np.asarray(rgb, dtype=np.uint8)))


def save_image(path: Path, image: Image.Image) -> None:
    """Write `image` whole or not at all (a stopped run leaves no 0-byte PNG that looks done),
    in the format its suffix names; sub-folder names (Cityscapes' `city/image`) get their folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with written_atomically(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])


def save_figure(path: Path, fig: Figure, **kwargs) -> None:
    """`fig.savefig` through a temporary name beside `path`."""
    with written_atomically(Path(path)) as tmp:
        fig.savefig(tmp, format=Path(path).suffix[1:], **kwargs)


def side_by_side(sample: dict, palette: np.ndarray) -> np.ndarray:
    """One row image | truth | prediction (| after CRF) as an array, for loggers."""
    panels = [sample["image"]] + [
        overlay(sample["image"], sample[k], palette)
        for k in ("truth", "pred", "crf")
        if k in sample
    ]
    return np.concatenate(panels, axis=1)


def comparison_figure(samples: dict[str, dict], palette: np.ndarray) -> Figure:
    """Grid with one row per image: image | truth | prediction | after CRF (when present)."""
    columns = [("image", "image"), ("truth", "truth"), ("pred", "prediction"), ("crf", "after CRF")]
    columns = [c for c in columns if all(c[0] in s for s in samples.values())]
    fig = new_figure(figsize=(2.6 * len(columns), 2.6 * len(samples)))
    axes = fig.subplots(len(samples), len(columns), squeeze=False)
    for i, (row, (name, sample)) in enumerate(zip(axes, samples.items(), strict=True)):
        for ax, (key, title) in zip(row, columns, strict=True):
            ax.imshow(sample[key] if key == "image" else colorize(sample[key], palette))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(title if i == 0 else "", fontsize=9)
        row[0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def confusion_figure(confusion: np.ndarray, class_names: list[str]) -> Figure:
    """Row-normalized confusion matrix (rows: truth), so each row shows where a class goes."""
    confusion = np.asarray(confusion, dtype=np.float64)
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = 2 + 0.4 * len(class_names)
    fig = new_figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("truth")
    if len(class_names) <= 25:
        for i in ticks:
            for j in ticks:
                ax.text(
                    j,
                    i,
                    f"{rows[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="white" if rows[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return fig


def figure_array(fig: Figure) -> np.ndarray:
    """Render a figure to an (H, W, 3) uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
