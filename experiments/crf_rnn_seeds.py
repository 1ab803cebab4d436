"""Stage 1 / control / stage 2 of CRF-RNN training over several seeds, as one table.

From one stage-1 checkpoint (`make demo`'s), for each seed: the control (`experiment=
crf_rnn_finetune crf_rnn=none`, the same recipe without the layer) and stage 2 (the recipe with
it), each a `src/train.py` run in its own folder; then a markdown table of val mIoU (%): stage 1
(the checkpoint's own metrics.json beside it), the control (network / + post-hoc CRF) and stage 2
(network / + post-hoc CRF / + trained layer), with the trained layer's margins over both post-hoc
CRFs. Extra arguments are overrides for both runs of every seed (the recipe's knobs; the
control drops the layer's own `crf_rnn.*` ones):

    python experiments/crf_rnn_seeds.py --stage1 outputs/<demo run> --out outputs/s2 \
        --seeds 0 1 2 [override ...]

A run whose metrics.json exists is not rerun (delete its folder to redo it); `--controls`
names another folder for the control runs, so that variants of the layer share one control.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(folder: Path, stage1: Path, seed: int, overrides: list[str]) -> dict:
    """metrics.json of one `src/train.py experiment=crf_rnn_finetune` run (run if missing)."""
    metrics = folder / "metrics.json"
    if not metrics.exists():
        command = [
            sys.executable,
            str(ROOT / "src" / "train.py"),
            "experiment=crf_rnn_finetune",
            f"stage1_checkpoint={stage1 / 'checkpoints' / 'last.ckpt'}",
            f"seed={seed}",
            f"hydra.run.dir={folder}",
            *overrides,
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(metrics.read_text())


def miou(metrics: dict, prefix: str) -> float:
    return metrics[f"{prefix}/mIoU"]  # metrics.json holds percentages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", type=Path, required=True, help="the stage-1 run's folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument("--controls", type=Path, help="folder for the control runs (--out)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args, overrides = parser.parse_known_args()
    stage1 = json.loads((args.stage1 / "metrics.json").read_text())
    s1_net, s1_crf = miou(stage1, "val"), miou(stage1, "val_crf")
    print(
        "| seed | stage 1: network / + post-hoc CRF | control: network / + post-hoc CRF "
        "| stage 2: network / + post-hoc CRF / + trained layer | layer - stage 1 CRF "
        "| layer - control CRF |\n|---|---:|---:|---:|---:|---:|"
    )
    margins = []
    for seed in args.seeds:
        control = run(
            (args.controls or args.out) / f"control_seed{seed}",
            args.stage1,
            seed,
            [o for o in overrides if not o.startswith("crf_rnn.")] + ["crf_rnn=none"],
        )
        stage2 = run(args.out / f"stage2_seed{seed}", args.stage1, seed, overrides)
        c_net, c_crf = miou(control, "val"), miou(control, "val_crf")
        net, crf, layer = miou(stage2, "val_net"), miou(stage2, "val_crf"), miou(stage2, "val")
        margins.append(min(layer - s1_crf, layer - c_crf))
        print(
            f"| {seed} | {s1_net:.2f} / {s1_crf:.2f} | {c_net:.2f} / {c_crf:.2f} "
            f"| {net:.2f} / {crf:.2f} / {layer:.2f} | {layer - s1_crf:+.2f} "
            f"| {layer - c_crf:+.2f} |",
            flush=True,
        )
    print(f"\nsmallest margin over both post-hoc CRFs: {min(margins):+.2f} mIoU")


if __name__ == "__main__":
    main()
