"""Speed benchmark: training and inference images/s, peak memory, CRF and data loading rates.

    OMP_WAIT_POLICY=passive python experiments/bench.py          # everything, CPU or GPU (auto)
    python experiments/bench.py --models vgg16/largefov,vgg16/fov_7x7_r4 --steps 2 --skip crf,data
    python experiments/bench.py --device cuda --precision bf16-mixed --channels-last --compile

Each model is built from its conf/model + conf/backbone files and timed in a fresh process (so
its peak memory is its own): warm-up steps, then `--steps` timed training steps (forward, the
training loss, backward, SGD update at 321 x 321, batch 1) and inference passes at 513 x 513;
medians. The CRF rows reuse experiments/bench_crf.py when present, the data row
experiments/bench_data.py. Prints a markdown table, writes JSON (--out).
"""

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
from pathlib import Path

import hydra
import timing
import torch
from torch.utils.flop_counter import FlopCounterMode

from deeplab.engine import speed
from deeplab.engine.losses import segmentation_loss
from deeplab.engine.optimizer import build_sgd
from deeplab.runtime.config import compose

REPO = Path(__file__).resolve().parents[1]
# row name -> (conf/model file, conf/backbone file, msc)
MODELS = {
    "vgg16/fov_7x7_r4": ("fov_7x7_r4", "vgg16", False),
    "vgg16/fov_4x4_r4": ("fov_4x4_r4", "vgg16", False),
    "vgg16/fov_4x4_r8": ("fov_4x4_r8", "vgg16", False),
    "vgg16/largefov": ("largefov", "vgg16", False),
    "vgg16/aspp_s": ("aspp_s", "vgg16", False),
    "vgg16/aspp_l": ("aspp_l", "vgg16", False),
    "resnet101/aspp_l": ("aspp_l", "resnet101", False),
    "resnet101/aspp_l+msc": ("aspp_l", "resnet101", True),
}
NUM_CLASSES = 21


def build(name: str, width_mult: float) -> torch.nn.Module:
    """The network of a row, from the same config files `train.py` composes."""
    model, backbone, msc = MODELS[name]
    overrides = [f"model={model}", f"backbone={backbone}", f"data.num_classes={NUM_CLASSES}"]
    overrides += [f"model.width_mult={width_mult}", f"model.msc={str(msc).lower()}"]
    return hydra.utils.instantiate(compose("train", overrides).model)


def step_flops(name: str, width_mult: float, crop: int, batch: int) -> int:
    """FLOPs of one training forward + backward, counted on the meta device (no compute)."""
    with torch.device("meta"):
        net = build(name, width_mult).train()
        x = torch.empty(batch, 3, crop, crop)
        counter = FlopCounterMode(display=False)
        with counter:
            out = net(x)
            outs = out if isinstance(out, list) else [out]
            sum(o.sum() for o in outs).backward()
    return counter.get_total_flops()


def measure_model(name: str, args: argparse.Namespace) -> dict:
    """Training img/s, inference img/s and peak memory of one row (run in its own process)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    net = build(name, args.width_mult).to(device)
    speed.apply_speed_options(
        net,
        {
            "atrous_mode": args.atrous_mode,
            "channels_last": args.channels_last,
            "compile": args.compile,
        },
    )
    optimizer = build_sgd(net, 1e-3)
    dtype = torch.bfloat16 if args.precision == "bf16-mixed" else None
    image = torch.randn(args.batch, 3, args.crop, args.crop, device=device)
    mask = torch.randint(0, NUM_CLASSES, (args.batch, args.crop, args.crop), device=device)

    def train_step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = segmentation_loss(net(image), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    big = torch.randn(1, 3, args.infer_size, args.infer_size, device=device)

    @torch.no_grad()
    def infer() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            net(big)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    net.train()
    train_s, train_cpu_s = timing.median_seconds(train_step, device, args.warmup, args.steps)
    train_peak = timing.peak_bytes(device)
    net.eval()
    infer_s = (
        timing.median_seconds(infer, device, args.warmup, args.steps)[0]
        if args.infer_size
        else None
    )
    return {
        "model": name,
        "params": sum(p.numel() for p in net.parameters()),
        "train_step_s": train_s,
        "train_step_cpu_s": train_cpu_s,
        "train_img_per_s": args.batch / train_s,
        "train_peak_mem_mib": train_peak / 2**20,
        "infer_img_per_s": 1 / infer_s if infer_s else None,
    }


def bench_models(args: argparse.Namespace) -> list[dict]:
    """One fresh spawned process per model, so peak memory and caches do not carry over."""
    rows = []
    ctx = mp.get_context("spawn")
    for name in args.models:
        with ctx.Pool(1) as pool:
            row = pool.apply(measure_model, (name, args))
        row["train_gflop_per_step"] = step_flops(name, args.width_mult, args.crop, args.batch) / 1e9
        row["train_tflop_per_s"] = row["train_gflop_per_step"] / row["train_step_s"] / 1e3
        if args.peak_tflops:
            row["mfu"] = row["train_tflop_per_s"] / args.peak_tflops
        rows.append(row)
        print(model_row(row), flush=True)
    return rows


def model_row(r: dict) -> str:
    infer = f"{r['infer_img_per_s']:.3f}" if r["infer_img_per_s"] else "-"
    mfu = f" {100 * r['mfu']:.1f}% |" if "mfu" in r else ""
    return (
        f"| {r['model']} | {r['params'] / 1e6:.1f}M | {r['train_step_s']:.2f} | "
        f"{r['train_step_cpu_s']:.1f} | "
        f"{r['train_img_per_s']:.3f} | {r['train_peak_mem_mib']:.0f} | {infer} | "
        f"{r['train_tflop_per_s'] * 1e3:.0f} |{mfu}"
    )


def model_header(args: argparse.Namespace) -> str:
    mfu = bool(args.peak_tflops)
    return (
        f"| model | params | train s/step ({args.crop}, batch {args.batch}) | CPU s/step "
        "| train img/s "
        f"| peak mem MiB | infer img/s ({args.infer_size}) "
        "| train GFLOP/s |"
        + (" MFU |" if mfu else "")
        + "\n|---|---|---|---|---|---|---|---|"
        + ("---|" if mfu else "")
    )


def _experiments_module(name: str):
    """A sibling script of experiments/ (bench_crf, bench_data) as a module, or None if absent."""
    path = REPO / "experiments" / f"{name}.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_data(args: argparse.Namespace) -> dict | None:
    """Input pipeline images/s of one worker, via experiments/bench_data.py."""
    module = _experiments_module("bench_data")
    if module is None or not (Path(args.voc_root) / "VOC2012").is_dir():
        print(f"data: skipped (needs experiments/bench_data.py and {args.voc_root}/VOC2012)")
        return None
    from deeplab.data.datamodule import VOCDataModule

    torch.set_num_threads(1)
    dm = VOCDataModule(args.voc_root, batch_size=1)
    dm.setup("fit")
    rate = module.per_worker(dm.train_set, args.data_samples)
    print(f"| input pipeline (VOC, 321 crop, 1 worker) | {rate:.1f} img/s |")
    return {"per_worker_img_per_s": rate, "root": args.voc_root}


def bench_crf(args: argparse.Namespace) -> dict | None:
    """CRF milliseconds per VOC-size image per backend, via experiments/bench_crf.py."""
    module = _experiments_module("bench_crf")
    if module is None:
        print("crf: skipped (experiments/bench_crf.py is absent)")
        return None
    backends = [("pydensecrf", "cpu"), ("torch", "cpu")]
    if args.device == "cuda":
        backends.append(("torch", "cuda"))
    result = {}
    for backend, device in backends:
        r = module.run_isolated(backend, device, "voc", args.steps, args.threads)
        result[f"{backend}/{device}"] = {"ms_per_image": r["ms"], "peak_mib": r["peak_mib"]}
        print(f"| CRF {backend} on {device}, 500x375, 10 iterations | {r['ms']:.0f} ms/image |")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help=f"subset of {list(MODELS)}")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--steps", type=int, default=3, help="timed repeats (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--infer-size", type=int, default=513, help="0 skips inference")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--atrous-mode", default="auto")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak, for MFU")
    parser.add_argument("--skip", default="", help="comma-separated: models,crf,data")
    parser.add_argument("--voc-root", default=str(REPO.parent / "shared" / "data" / "voc_sample"))
    parser.add_argument("--data-samples", type=int, default=50)
    parser.add_argument("--out", default="outputs/bench/bench.json")
    args = parser.parse_args()
    args.models = args.models.split(",") if args.models else []
    unknown = set(args.models) - set(MODELS)
    if unknown:
        raise ValueError(f"--models: unknown {sorted(unknown)}; choose from {list(MODELS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    skip = set(filter(None, args.skip.split(",")))

    meta = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else timing.cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default: active)"),
        "torch": torch.__version__,
        "load_before": [round(v, 2) for v in os.getloadavg()],
        "options": {k: v for k, v in vars(args).items() if k not in ("models", "skip", "out")},
    }
    print(f"device {meta['device']}, torch {meta['torch']}, load {meta['load_before']}\n")
    results = {"meta": meta}
    if "models" not in skip and args.models:
        print(model_header(args), flush=True)
        results["models"] = bench_models(args)
    if "crf" not in skip:
        results["crf"] = bench_crf(args)
    if "data" not in skip:
        results["data"] = bench_data(args)
    meta["load_after"] = [round(v, 2) for v in os.getloadavg()]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nload average after {meta['load_after']}; JSON: {out}")


if __name__ == "__main__":
    main()
