"""Segment images: `python src/predict.py ckpt_path=... input=<image or folder> [crf=...]`.

Writes palette PNG masks (`masks/`) and colour overlays (`overlays/`) into `output_dir`
(default: the Hydra run directory), named after each image's stem (`x.jpg` -> `x.png`), or stem and
suffix when two images share a stem (`x.jpg`, `x.png` -> `x_jpg.png`, `x_png.png`). Unreadable
images are skipped and listed at the end, with exit status 2.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.engine.prediction import predict
from deeplab.runtime.cli import check_command_line, reports_user_errors
from deeplab.weights.checkpoint_overrides import with_checkpoint_overrides


@hydra.main(config_path="../conf", config_name="predict", version_base="1.3")
@reports_user_errors
def main(cfg: DictConfig) -> None:
    # Unreadable images raise SkippedImages (a UserError) after every other mask is written.
    written = predict(cfg, HydraConfig.get().runtime.output_dir)
    print(f"wrote {len(written)} masks to {written[0].parent}")


if __name__ == "__main__":
    # the checkpoint's settings (read as data: handed_config), then the user's
    sys.argv = reports_user_errors(with_checkpoint_overrides)(sys.argv)
    check_command_line(sys.argv[1:], "predict")  # Hydra's own errors, as one message
    main()
