"""Score a checkpoint on the val split: `python src/evaluate.py ckpt_path=...`.

The checkpoint brings its network, data set (and split), normalisation and, for a converted Caffe
file, the released test protocol; anything on the command line goes on top. Options:
`tta.scales=[0.5,0.75,1.0]`, `tta.flip=true`, `tta.tile=513` (sliding window), `tta.pad_to=513`
(the released test nets' protocol), `crf=...`, `save_probs=<dir>`.
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.engine.pipeline import evaluate
from deeplab.runtime.cli import check_command_line, reports_user_errors
from deeplab.weights.checkpoint_overrides import with_checkpoint_overrides


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    return evaluate(cfg, HydraConfig.get().runtime.output_dir)["val/mIoU"]


if __name__ == "__main__":
    # the checkpoint's settings (read as data: handed_config), then the user's
    sys.argv = reports_user_errors(with_checkpoint_overrides)(sys.argv)
    check_command_line(sys.argv[1:], "evaluate")  # Hydra's own errors, as one message
    main()
