"""Score a CRF setting on saved probabilities and write metrics.json (val/ and val_crf/,
design.md I6).

`python src/crf_eval.py probs_dir=<dir> crf=deeplab_vgg16 crf.bi_w=5`; with `-m` Hydra sweeps
`crf.*` and each job writes its own metrics.json. The grid search with its coarse-to-fine
protocol and table is `python -m deeplab.crf.search <dir>`.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from deeplab.crf.search import load_split, score, score_setting
from deeplab.engine.results import as_metrics, print_table, write_metrics
from deeplab.runtime.cli import check_command_line, reports_user_errors
from deeplab.runtime.config import instantiate
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import UserError
from deeplab.runtime.progress import Progress
from deeplab.runtime.signals import exits_on_stop_signals


@hydra.main(config_path="../conf", config_name="crf_eval", version_base="1.3")
@reports_user_errors
def main(cfg: DictConfig) -> float:
    with exits_on_stop_signals("the CRF evaluation"):  # its workers and run lock go too
        return evaluate_crf(cfg)


def evaluate_crf(cfg: DictConfig) -> float:
    check_config(cfg)
    if cfg.crf is None:
        raise UserError("crf_eval needs a CRF: pass crf=deeplab_vgg16 or crf=deeplab_resnet101")
    crf = instantiate(cfg.crf)  # the CRF checks its parameters: a bad one is a UserError
    images, probs, masks = load_split(hydra.utils.to_absolute_path(cfg.probs_dir), cfg.limit)
    with Progress(f"CRF ({crf.backend})", len(images), "images") as bar:
        crf_scores = score_setting(crf, images, probs, masks, cfg.num_workers, bar.advance)
    results = {"val": score(probs, masks), "val_crf": crf_scores}
    metrics = as_metrics(results)
    metrics["num_images"] = len(images)
    metrics["crf"] = {**crf.params, "backend": crf.backend}
    write_metrics(Path(HydraConfig.get().runtime.output_dir) / "metrics.json", metrics)
    print_table(metrics, title=f"CRF on {len(images)} saved images (%): {crf}")
    return metrics["val_crf/mIoU"]


if __name__ == "__main__":
    check_command_line(sys.argv[1:], "crf_eval")  # Hydra's own errors, as one message
    main()
