"""CRF parameter search on saved probabilities (paper.md §5):
`python -m deeplab.crf.search PROBS_DIR [crf=deeplab_vgg16] [crf.KEY=VALUE ...] [--options]`.

The CRF is composed from the same `crf` config group as `train.py`, `evaluate.py` and
`crf_eval.py` (with `crf_eval.py`'s defaults), so the values it finds land in the CRF those tools
run; the search varies only its grid axes and ends by printing the `crf_eval.py` command that
scores its best setting again.

The paper's protocol: fix the smoothness kernel (the config's pos_w, pos_xy_std: 3, 3),
grid-search the appearance kernel's bi_w in {3..6}, bi_xy_std in {30, 40, ..., 100}, bi_rgb_std
in {3..6} on 100 val images, then refine around the best point with half steps. The network never
reruns: the probabilities come from `evaluate.py save_probs=<dir>` (format in
`deeplab.crf.probs_io`).
Prints the best setting and a markdown table of the grid, and writes JSON. Each scored setting is
also appended to a .jsonl beside the JSON as it is scored; run again on the same folder, the search
skips what that file holds (`--restart` to start over). `--wandb` also logs the scored settings
as a table in a W&B run (job type `crf_search`, offline unless logged in; docs/wandb.md).
"""

import argparse
import hashlib
import itertools
import json
import shlex
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from deeplab.crf.dense_crf import DenseCRF
from deeplab.crf.parallel import refine_many
from deeplab.crf.probs_io import load_probabilities, probability_files
from deeplab.data.classes import IGNORE_INDEX, VOC_CLASSES
from deeplab.data.metrics import confusion_matrix, scores
from deeplab.runtime.atomic import check_writable, written_atomically
from deeplab.runtime.cli import checked_compose, reports_user_errors
from deeplab.runtime.config import hydra_value, instantiate
from deeplab.runtime.errors import UserError
from deeplab.runtime.progress import Progress, track
from deeplab.runtime.signals import exits_on_stop_signals
from deeplab.runtime.wandb_runs import PROJECT, RunIdentity, folder_id, start_run

COARSE = {
    "bi_w": [3.0, 4.0, 5.0, 6.0],
    "bi_xy_std": [30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
    "bi_rgb_std": [3.0, 4.0, 5.0, 6.0],
}
AXES = tuple(COARSE)


def load_split(probs_dir, limit: int | None = 100) -> tuple[list, list, list]:
    """Images, probs (float16, to halve the memory of 100 full-size maps) and masks; a mask
    value that is neither a class of its probabilities nor void is refused naming the file."""
    images, probs, masks = [], [], []
    files = probability_files(probs_dir, limit)
    for path in track(files, f"loading {probs_dir}", unit="files"):
        image, p, mask = load_probabilities(path)
        bad = np.unique(mask[(mask >= p.shape[0]) & (mask != IGNORE_INDEX)])
        if bad.size:
            raise UserError(
                f"probabilities file {path}: its mask holds values {bad[:8].tolist()}, neither "
                f"one of its {p.shape[0]} classes nor void ({IGNORE_INDEX}): save the "
                "probabilities again with the data set they were computed on"
            )
        images.append(image)
        probs.append(p.astype(np.float16))
        masks.append(mask)
    return images, probs, masks


def confusion(preds: list[np.ndarray], masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    """K x K counts (rows: truth) over all images, 255 skipped: the training metric's matrix."""
    matrix = confusion_matrix(num_classes)
    for pred, mask in zip(preds, masks, strict=True):
        matrix.update(torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(mask)))
    return matrix.compute().numpy()


def class_names(num_classes: int) -> list[str]:
    return VOC_CLASSES if num_classes == len(VOC_CLASSES) else [str(i) for i in range(num_classes)]


def score(probs: list, masks: list) -> dict:
    """Scores (percent, deeplab.data.metrics) of the argmax of each probability map."""
    k = probs[0].shape[0]
    preds = [np.asarray(p).argmax(0) for p in probs]
    return scores(torch.from_numpy(confusion(preds, masks, k)), class_names(k))


def score_setting(
    crf: DenseCRF, images, probs, masks, num_workers: int | None, progress=None
) -> dict:
    """Scores after the CRF; `progress(n)` is told as each n more images are refined."""
    return score(refine_many(crf, images, probs, num_workers, progress), masks)


def fine_grid(best: dict, steps: dict) -> dict:
    """best +- one fine step on each axis (values must stay positive)."""
    return {
        a: sorted({v for v in (best[a] - steps[a], best[a], best[a] + steps[a]) if v > 0})
        for a in AXES
    }


def half_spacing(values: list[float]) -> float:
    return (min(np.diff(sorted(values))) / 2) if len(values) > 1 else values[0] / 10


def content_digest(files: list[Path]) -> str:
    """SHA-256 over the bytes of `files`: a score log holds the scores of exactly these
    probabilities (saved again under the same names, the old scores would be reported)."""
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()


class ScoreLog:
    """`<out>.jsonl`: a header naming the search (the fixed CRF settings, the images), then one line
    per scored setting, written as soon as it is scored. A rerun with the same header skips what
    it holds, so an interrupted search resumes; a line cut off by the interruption is dropped."""

    def __init__(self, path: Path, header: dict, restart: bool = False):
        self.path, self.scored = path, {}
        lines = path.read_text().split("\n") if path.is_file() and not restart else []
        complete = lines[:-1]  # text after the last newline: a record cut off mid-write, if any
        if not complete or lines[-1]:
            with written_atomically(path) as tmp:
                tmp.write_text("".join(line + "\n" for line in complete or [json.dumps(header)]))
        if not complete:
            return
        try:
            stored, *records = [json.loads(line) for line in complete]
            self.scored = {tuple(r[a] for a in AXES): r for r in records}
        except (ValueError, KeyError, TypeError) as err:
            raise UserError(
                f"{path} is not a CRF search log ({err!r}): delete it or pass --restart"
            ) from err
        if stored != header:
            changed = sorted(k for k in header if stored.get(k) != header[k])
            raise UserError(
                f"{path} holds scores of another search (different {', '.join(changed)}): pass "
                "--restart to discard them, or --out to write elsewhere"
            )

    def append(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def search(
    images,
    probs,
    masks,
    grid: dict,
    fine_steps: dict | None,
    crf_config: DictConfig,
    num_workers,
    log: ScoreLog | None = None,
) -> tuple[list[dict], dict]:
    """Run the coarse grid, then (if `fine_steps`) the fine grid around the best coarse point.

    Each setting is `crf_config` with its grid axes replaced. Settings already in `log` are taken
    from it, and every new score is appended to it."""
    results, seen = [], set()
    scored = log.scored if log else {}

    def run(stage: str, g: dict) -> None:
        todo = [v for v in itertools.product(*(g[a] for a in AXES)) if v not in seen]
        seen.update(todo)
        done = sum(v in scored for v in todo)
        with Progress(f"CRF search, {stage} grid", len(todo), "settings", completed=done) as bar:
            for values in todo:
                if values in scored:
                    results.append({**scored[values], "stage": stage})
                    continue
                setting = dict(zip(AXES, values, strict=True))
                start = time.perf_counter()
                crf = instantiate(crf_config, **setting)
                s = score_setting(crf, images, probs, masks, num_workers)
                results.append(
                    {"stage": stage, **setting, "mIoU": s["mIoU"], "pixel_acc": s["pixel_acc"],
                     "seconds": time.perf_counter() - start}
                )  # fmt: skip
                if log:
                    log.append(results[-1])
                print(f"[{stage}] {setting_label(setting)}  mIoU {s['mIoU']:.2f}")
                best = max(results, key=lambda r: r["mIoU"])
                bar.advance(info=f"best mIoU {best['mIoU']:.2f} at {setting_label(best)}")

    run("coarse", grid)
    if fine_steps:
        run("fine", fine_grid(max(results, key=lambda r: r["mIoU"]), fine_steps))
    return results, max(results, key=lambda r: r["mIoU"])


def setting_label(setting: dict) -> str:
    return " ".join(f"{a}={setting[a]:g}" for a in AXES)


def composed_crf(overrides: list[str]) -> DictConfig:
    """The `crf` node that `crf_eval.py <overrides>` composes, refused when it is no CRF or when
    an override sets a grid axis (the search would overwrite it)."""
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" not in override or (key != "crf" and not key.startswith("crf.")):
            raise UserError(
                f"{override!r} is not a CRF setting: the search takes crf=<option> and "
                "crf.KEY=VALUE overrides (the images are PROBS_DIR, --limit and --num-workers)"
            )
        if key.removeprefix("crf.") in AXES:
            flag = "--" + key.removeprefix("crf.").replace("_", "-")
            raise UserError(f"{key} is an axis of the search grid: give its values with {flag}")
    crf_config = checked_compose("crf_eval", overrides).crf
    if crf_config is None:
        raise UserError("the CRF search needs a CRF: crf=deeplab_vgg16 or crf=deeplab_resnet101")
    return crf_config


def reproducing_overrides(args: argparse.Namespace, crf_config: DictConfig, best: dict) -> list:
    """`crf_eval.py` overrides that score `best` on the same images: every CRF value spelt out
    (backend and normalisation included), so no default of either tool can differ."""
    choice = [o for o in args.overrides if o.split("=", 1)[0] == "crf"][-1:]
    values = OmegaConf.to_container(crf_config, resolve=True) | {a: best[a] for a in AXES}
    settings = [f"crf.{k}={hydra_value(v)}" for k, v in values.items() if k != "_target_"]
    limit = f"limit={args.limit or 'null'}"
    return [shlex.quote(o) for o in (f"probs_dir={args.probs_dir}", limit, *choice, *settings)]


def markdown(results: list[dict], unary_miou: float) -> str:
    rows = sorted(results, key=lambda r: -r["mIoU"])
    lines = [
        f"No CRF: mIoU {unary_miou:.2f}",
        "",
        "| stage | bi_w | bi_xy_std | bi_rgb_std | mIoU | gain | pixel acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['bi_w']:g} | {r['bi_xy_std']:g} | {r['bi_rgb_std']:g} | "
            f"{r['mIoU']:.2f} | {r['mIoU'] - unary_miou:+.2f} | {r['pixel_acc']:.2f} |"
        )
    return "\n".join(lines)


def log_to_wandb(report: dict, out: Path, group: str | None, project: str) -> Path:
    """The search as a W&B run under `<out stem>_wandb/` beside the JSON: every scored setting as
    a sortable table, the no-CRF and best scores and the best setting in the summary. Its group
    defaults to one of its own; pass a sweep's (`table1/<date>/<time>`) to show it there."""
    import wandb

    probs_dir = Path(report["probs_dir"])
    who = RunIdentity(
        group=group or f"crf_search/{folder_id(probs_dir)}",
        name=f"{probs_dir.name}, {report['num_images']} images",
        job_type="crf_search",
        tags=["crf_search", report["fixed"]["backend"]],
    )
    run = start_run(out.parent / f"{out.stem}_wandb", who, project, config=report["fixed"])
    columns = ["stage", *AXES, "mIoU", "pixel_acc", "seconds"]
    rows = [[r[c] for c in columns] for r in report["results"]]
    run.log({"CRF settings": wandb.Table(columns=columns, data=rows)})
    summary = {f"no_crf/{k}": v for k, v in report["unary"].items()}
    summary |= {f"best/{k}": report["best"][k] for k in (*AXES, "mIoU", "pixel_acc")}
    run.summary.update(summary)
    run_dir = Path(run.dir).parent
    run.finish()
    return run_dir


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("probs_dir", help="folder of .npz files from evaluate.py save_probs=<dir>")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="the CRF, as every tool takes it: crf=<option> (default deeplab_vgg16) and crf.KEY="
        "VALUE Hydra overrides, e.g. crf.backend=torch crf.iterations=5 (before the options)",
    )
    p.add_argument("--limit", type=int, default=100, help="first N images (paper: 100; 0 = all)")
    p.add_argument(
        "--num-workers", type=int, default=None, help="pydensecrf processes (default: all cores)"
    )
    for axis, values in COARSE.items():
        p.add_argument(f"--{axis.replace('_', '-')}", type=float, nargs="+", default=values)
    p.add_argument("--fine-steps", type=float, nargs=3, metavar=("BI_W", "BI_XY", "BI_RGB"),
                   help="fine-stage steps (default: half the coarse spacing)")  # fmt: skip
    p.add_argument("--no-fine", action="store_true", help="coarse grid only")
    p.add_argument(
        "--out", type=Path, default=None, help="JSON path (default: PROBS_DIR/crf_search.json)"
    )
    p.add_argument(
        "--restart", action="store_true", help="discard the scores the .jsonl beside --out holds"
    )
    p.add_argument(
        "--wandb",
        action="store_true",
        help="also log the scored settings to a W&B run (offline unless logged in)",
    )
    p.add_argument("--wandb-group", help="W&B group (default: crf_search/<probs dir>)")
    p.add_argument("--wandb-project", default=PROJECT, help=f"W&B project (default: {PROJECT})")
    return p.parse_intermixed_args(argv)


@reports_user_errors
def main(argv=None) -> dict:
    args = parse_args(argv)
    with exits_on_stop_signals("the CRF search", "run the same command again: settings "
                               "already scored are read back from the .jsonl log"):  # fmt: skip
        return run_search(args)


def run_search(args: argparse.Namespace) -> dict:
    """The search `main` starts, with its arguments parsed."""
    crf_config = composed_crf(args.overrides)
    grid = {a: getattr(args, a) for a in AXES}
    fine = None
    if not args.no_fine:
        fine = dict(zip(AXES, args.fine_steps, strict=True)) if args.fine_steps else {
            a: half_spacing(grid[a]) for a in AXES
        }  # fmt: skip
    crf = instantiate(crf_config)  # checks the fixed values; `backend: auto` is decided here
    with open_dict(crf_config):
        crf_config.backend = crf.backend  # every setting runs (and is reproduced) on this one
    fixed = {k: v for k, v in crf.params.items() if k not in AXES} | {"backend": crf.backend}
    # Before the (long) loading, so that a log of another search is refused at once.
    out = args.out or Path(args.probs_dir) / "crf_search.json"
    files = probability_files(args.probs_dir, args.limit or None)
    check_writable(out.parent, "--out")
    header = {**fixed, "images": [p.name for p in files], "content": content_digest(files)}
    log = ScoreLog(out.with_suffix(".jsonl"), header, args.restart)
    images, probs, masks = load_split(args.probs_dir, args.limit or None)
    unary = score(probs, masks)
    print(
        f"{len(images)} images from {args.probs_dir}; backend {crf.backend}; "
        f"no CRF: mIoU {unary['mIoU']:.2f}"
    )
    if log.scored:
        print(f"{len(log.scored)} settings already scored in {log.path}: skipping them")
    results, best = search(images, probs, masks, grid, fine, crf_config, args.num_workers, log)

    table = markdown(results, unary["mIoU"])
    print("\n" + table + "\n")
    print(
        f"Best: {setting_label(best)}: mIoU {best['mIoU']:.2f} "
        f"({best['mIoU'] - unary['mIoU']:+.2f} over no CRF); the same score again:\n"
        + " ".join(["python src/crf_eval.py", *reproducing_overrides(args, crf_config, best)])
    )
    report = {
        "probs_dir": str(args.probs_dir),
        "num_images": len(images),
        "unary": {k: unary[k] for k in ("mIoU", "pixel_acc", "mean_acc", "fwIoU")},
        "fixed": fixed,
        "best": best,
        "results": results,
    }
    with written_atomically(out) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Wrote {out}")
    if args.wandb:
        run_dir = log_to_wandb(report, out, args.wandb_group, args.wandb_project)
        print(f"W&B run {run_dir} (upload: wandb sync {run_dir})")
    return report


if __name__ == "__main__":
    main()
