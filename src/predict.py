"""Segment images: `python src/predict.py ckpt_path=... input=<image or folder> [crf=...]`.

Writes palette PNG masks (`masks/`) and colour overlays (`overlays/`) into `output_dir`
(default: the Hydra run directory), named after each image's stem (`x.jpg` -> `x.png`), or stem and
suffix when two images share a stem (`x.jpg`, `x.png` -> `x_jpg.png`, `x_png.png`). Unreadable
images are skipped and listed at the end, with exit status 1.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.pipeline import SkippedImages, predict


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        written = predict(cfg, HydraConfig.get().runtime.output_dir)
    except SkippedImages as err:
        sys.exit(f"error: {err}")  # the masks of every readable image are written; exit status 1
    print(f"wrote {len(written)} masks to {written[0].parent}")


if __name__ == "__main__":
    main()
