"""Times every atrous layer of the DeepLab networks both ways: dilation vs space-to-batch.

    python experiments/bench_atrous.py [--layers fc6_7x7_r4,conv5_r2] [--size 41] [--infer]

Prints a markdown table (forward / backward milliseconds per way, medians) and writes JSON next
to it. The `auto` rule in `deeplab.models.atrous` is justified by these numbers (docs/speed.md).
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from deeplab.models.atrous import AtrousConv2d

# name -> (in channels, out channels, kernel, rate): every distinct full-width atrous layer.
LAYERS = {
    "vgg_conv5_r2": (512, 512, 3, 2),
    "fc6_7x7_r4": (512, 4096, 7, 4),
    "fc6_4x4_r4": (512, 4096, 4, 4),
    "fc6_4x4_r8": (512, 4096, 4, 8),
    "fc6_3x3_r12": (512, 1024, 3, 12),  # LargeFOV; ASPP-S / ASPP-L branch at rate 12
    "aspp_fc6_r2": (512, 1024, 3, 2),
    "aspp_fc6_r4": (512, 1024, 3, 4),
    "aspp_fc6_r6": (512, 1024, 3, 6),
    "aspp_fc6_r8": (512, 1024, 3, 8),
    "aspp_fc6_r18": (512, 1024, 3, 18),
    "aspp_fc6_r24": (512, 1024, 3, 24),
    "res4_r2": (256, 256, 3, 2),
    "res5_r4": (512, 512, 3, 4),
    "resnet_aspp_r6": (2048, 21, 3, 6),
    "resnet_aspp_r12": (2048, 21, 3, 12),
    "resnet_aspp_r18": (2048, 21, 3, 18),
    "resnet_aspp_r24": (2048, 21, 3, 24),
}
MODES = ("dilation", "space_to_batch")


def time_once(conv: AtrousConv2d, x: torch.Tensor, train: bool) -> tuple[float, ...]:
    """Wall seconds of one forward and one backward (0 when not training), and the CPU seconds
    of both together: on a shared machine the wall time swings with the others' load, the CPU
    time much less (run with OMP_WAIT_POLICY=passive so idle threads do not spin)."""
    conv.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(train):
        c0, t0 = time.process_time(), time.perf_counter()
        y = conv(x)
        t1 = time.perf_counter()
        if train:
            y.backward(torch.ones_like(y))
    return t1 - t0, time.perf_counter() - t1, time.process_time() - c0


def bench(names: list[str], size: int, train: bool, repeats: int, max_out: int = 0) -> list[dict]:
    """Median forward / backward seconds per way; the ways alternate, so both see the same load."""
    rows = []
    for name in names:
        cin, cout, k, rate = LAYERS[name]
        cout = min(cout, max_out) if max_out else cout
        conv = AtrousConv2d(cin, cout, k, rate=rate)
        x = torch.randn(1, cin, size, size, requires_grad=train)
        times = {mode: [] for mode in MODES}
        for i in range(repeats + 1):
            for mode in MODES:
                conv.mode = mode
                t = time_once(conv, x, train)
                if i:  # the first call builds oneDNN primitives: not counted
                    times[mode].append(t)
        row = {"layer": name, "in": cin, "out": cout, "kernel": k, "rate": rate, "size": size}
        for mode, ts in times.items():
            row[mode] = {
                key: statistics.median(t[i] for t in ts)
                for i, key in enumerate(("fwd_s", "bwd_s", "cpu_s"))
            }
        rows.append(row)
        print(markdown([row], header=False), flush=True)
    return rows


def markdown(rows: list[dict], header: bool = True) -> str:
    lines = []
    if header:
        lines += [
            "| layer | in->out | k | r | map | dilation fwd / bwd ms | s2b fwd / bwd ms "
            "| s2b speed-up, wall | dilation / s2b CPU s | s2b speed-up, CPU |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
    for r in rows:
        d, s = r["dilation"], r["space_to_batch"]
        total_d, total_s = d["fwd_s"] + d["bwd_s"], s["fwd_s"] + s["bwd_s"]
        lines.append(
            f"| {r['layer']} | {r['in']}->{r['out']} | {r['kernel']} | {r['rate']} | "
            f"{r['size']} | {d['fwd_s'] * 1e3:.0f} / {d['bwd_s'] * 1e3:.0f} | "
            f"{s['fwd_s'] * 1e3:.0f} / {s['bwd_s'] * 1e3:.0f} | {total_d / total_s:.2f}x | "
            f"{d['cpu_s']:.2f} / {s['cpu_s']:.2f} | {d['cpu_s'] / s['cpu_s']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default=",".join(LAYERS), help="comma-separated names")
    parser.add_argument("--size", type=int, default=41, help="feature map side (321 crop -> 41)")
    parser.add_argument("--infer", action="store_true", help="forward only, no grad")
    parser.add_argument("--max-out", type=int, default=0, help="cap output channels (quick look)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="outputs/bench/atrous.json")
    args = parser.parse_args()
    unknown = set(args.layers.split(",")) - set(LAYERS)
    if unknown:
        raise ValueError(f"--layers: unknown {sorted(unknown)}; choose from {list(LAYERS)}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(markdown([]), flush=True)
    rows = bench(args.layers.split(","), args.size, not args.infer, args.repeats, args.max_out)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = [round(v, 2) for v in os.getloadavg()]
    meta = {"torch": torch.__version__, "threads": args.threads, "load": load}
    out.write_text(json.dumps({"meta": meta, "train": not args.infer, "rows": rows}, indent=1))
    print(f"\nload average {meta['load']}; JSON: {out}")


if __name__ == "__main__":
    main()
