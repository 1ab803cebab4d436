"""CRF-RNN speed on CPU: forward and forward + backward per 321 x 321 image, against post-hoc CRF.

Per mean-field iteration count (`--iterations`, default 5 as in training and 10 as at test time),
on `--images` real VOC val images resized to 321 x 321 (the training crop) with 21 labels and
coarse, noisy scores from their truth (`bench_crf.make_input`), all in one process with
`--threads` torch threads, interleaved, the minimum of `--repeats` runs per image kept (wall and
process CPU time, the steadier of the two on a shared machine), then averaged over the images:

- post-hoc: `DenseCRF` on raw scores (`kind="logits"`), pydensecrf and the torch port;
- CRF-RNN forward without autograd (evaluation), forward recording the graph, and forward +
  backward of a loss on its scores w.r.t. the scores and its parameters (training); the same
  with autograd through every lattice gather instead of the layer's transposed filtering;
- what autograd keeps for the backward (MB of saved tensors), and the share of pixels where the
  untrained layer's labels equal the torch post-hoc CRF's.

Then a training step with and without the CRF-RNN layer `crf_rnn=on` puts after the network (5
training iterations, the `crf` config's kernels), AdamW, interleaved, minimum of `--repeats`:
forward, loss on the labels, backward and the optimizer step, for two networks:

- the CPU demo's (`experiment=demo`: the narrow LargeFOV, a batch of 8 synthetic 128 x 128
  images, 7 labels, `crf=synthetic`);
- the paper's final DeepLab v2 (ASPP-L on ResNet-101, `crf=deeplab_resnet101`; random weights,
  which time the same) on `--paper-batch` real VOC images at the 321 x 321 training crop, 21
  labels;

then where one step with the layer goes, stage by stage (the labels `experiments/profile_crf.py`
reads).

Prints markdown tables (wall, CPU) and writes JSON:

    python experiments/bench_crf_rnn.py --out outputs/bench_crf_rnn.json
"""

import argparse
import json
import os
import platform
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch
from bench_crf import make_input  # this folder: the same real-image inputs as the CRF bench
from profile_crf import profiled  # ... and the same split of the time by labelled stage

SIZE, CLASSES = 321, 21
STAGES = ("lattice", "normalisation", "operator", "splat", "blur", "slice")  # profile_crf.py's
SETTING = dict(normalization="per_pixel")  # the rest: the released VGG-16 setting (defaults)


def inputs(count: int) -> list[tuple[np.ndarray, torch.Tensor]]:
    """(image uint8 (321, 321, 3), logits (21, 321, 321)) for `count` VOC images."""
    out = []
    for i in range(count):
        image, probs = make_input(SIZE, SIZE, CLASSES, seed=i, index=i)
        out.append((image, torch.from_numpy(np.log(probs))))
    return out


def saved_megabytes(layer, logits, images) -> float:
    """MB of the tensors autograd saves for the backward of one forward (each storage once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(logits.requires_grad_(), images)
    return sum(storages.values()) / 2**20


def _messages_by_autograd(q, weights, kernels):
    f = kernels.forward_filter
    per_column = weights.repeat_interleave(kernels.vertices)
    return f.slice(f.spread(q), f.slice.weight * per_column)


def bench(iterations: int, data, repeats: int) -> dict:
    from deeplab.crf import CRFRNN, DenseCRF, crf_rnn

    post_hoc = {
        backend: DenseCRF(backend=backend, iterations=iterations, **SETTING)
        for backend in ("pydensecrf", "torch")
    }
    layer = CRFRNN(CLASSES, iterations=iterations, **SETTING)

    def forward(logits, images):
        with torch.no_grad():
            return layer(logits, images)

    def forward_graph(logits, images):
        return layer(logits.requires_grad_(), images)

    def forward_backward(logits, images):
        layer(logits.requires_grad_(), images).logsumexp(1).sum().backward()

    def through_gathers(logits, images):
        """The same forward + backward with autograd through every splat, blur and slice gather
        instead of the transposed filtering on the lattice (`crf_rnn._Messages`)."""
        with patch.object(crf_rnn._Messages, "apply", _messages_by_autograd):
            forward_backward(logits, images)

    runs = {
        "pydensecrf": lambda im, lg, ims, lgs: post_hoc["pydensecrf"](im, lg.numpy(), "logits"),
        "torch": lambda im, lg, ims, lgs: post_hoc["torch"](im, lg, "logits"),
        "crf_rnn_forward": lambda im, lg, ims, lgs: forward(lgs, ims),
        "crf_rnn_forward_graph": lambda im, lg, ims, lgs: forward_graph(lgs.clone(), ims),
        "crf_rnn_forward_backward": lambda im, lg, ims, lgs: forward_backward(lgs.clone(), ims),
        "through_gathers": lambda im, lg, ims, lgs: through_gathers(lgs.clone(), ims),
    }
    ms = {name: [] for name in runs}
    cpu_ms = {name: [] for name in runs}
    agree, saved = [], []
    for image, logits in data:
        images = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        args = (image, logits, images, logits[None])
        for fn in runs.values():  # warm-up (allocator, smoothness-lattice cache)
            fn(*args)
        best = {name: [float("inf")] * 2 for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                fn(*args)
                wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
                best[name] = [min(best[name][0], 1000 * wall), min(best[name][1], 1000 * cpu)]
        for name in runs:
            ms[name].append(best[name][0])
            cpu_ms[name].append(best[name][1])
        labels = forward(logits[None], images)[0].argmax(0)
        agree.append(float((labels == runs["torch"](*args).argmax(0)).float().mean()))
        saved.append(saved_megabytes(layer, logits[None].clone(), images))
    return {
        "iterations": iterations,
        "ms": {name: float(np.mean(v)) for name, v in ms.items()},
        "cpu_ms": {name: float(np.mean(v)) for name, v in cpu_ms.items()},
        "agree": float(np.mean(agree)),
        "saved_mb": float(np.mean(saved)),
    }


def demo_batch(count: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` (image, mask) pairs of the demo's synthetic set (128 x 128, its generator)."""
    from deeplab.data.synthetic import draw_sample

    pairs = [draw_sample(np.random.default_rng([seed, 0, i]), 128, 4) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# The two networks a step is timed for: the CPU demo's (its own batch of synthetic images) and the
# paper's final DeepLab v2 (ASPP-L on ResNet-101, random weights: the time is the same) on real VOC
# images at the training crop, with DeepLab's ResNet-101 CRF kernels.
NETWORKS = {
    "demo": ["experiment=demo"],
    "paper": ["model=aspp_l", "backbone=resnet101", "data=voc", "crf=deeplab_resnet101"],
}


def paper_batch(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` (image, mask) pairs of real VOC images at the 321 x 321 training crop (the masks:
    the labels of the benchmark's coarse scores; a step's time does not depend on them)."""
    pairs = [make_input(SIZE, SIZE, CLASSES, seed=i, index=i) for i in range(count)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1].argmax(0) for p in pairs])


def training_steps(overrides: list[str], images: np.ndarray, masks: np.ndarray, repeats: int):
    """Milliseconds per training step (forward, loss, backward, optimizer step) of the network
    `overrides` compose, alone and with a CRF-RNN layer as `crf_rnn=on` builds it (the `crf`
    config's kernels, 5 training iterations), on `images` (B, H, W, 3) uint8 and `masks`;
    interleaved, min of `repeats` (wall and CPU), then where one step with the layer goes."""
    from deeplab.crf.crf_rnn import WithCRFRNN
    from deeplab.engine.losses import segmentation_loss
    from deeplab.runtime.config import compose, instantiate

    cfg = compose("train", [*overrides, "crf_rnn=on"])
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() - torch.tensor(mean)[:, None, None]
    x = x / torch.tensor(std)[:, None, None]
    mask = torch.from_numpy(masks).long()
    models = {}
    for name in ("network", "network + CRF-RNN"):
        torch.manual_seed(0)
        net = instantiate(cfg.model)
        if name != "network":
            layer = instantiate(cfg.crf_rnn)  # as `crf_rnn=on` trains it
            net = WithCRFRNN(net, layer, mean, std)
        net.train()
        models[name] = (net, torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr))

    def step(net, optimizer):
        optimizer.zero_grad()
        segmentation_loss(net(x), mask).backward()
        optimizer.step()

    best = {name: [float("inf")] * 2 for name in models}
    for _ in range(repeats + 1):  # the first round warms up
        for name, (net, optimizer) in models.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step(net, optimizer)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            best[name] = [min(best[name][0], 1000 * wall), min(best[name][1], 1000 * cpu)]
    stages = step_stages(lambda: step(*models["network + CRF-RNN"]))
    return {
        "batch": len(images),
        "size": list(images.shape[1:3]),
        "labels": int(cfg.data.num_classes),
        "iterations": layer.iterations,
        "ms": best,
        "stages": stages,
    }


def step_stages(step) -> dict:
    """Process CPU ms per stage of one training step with the layer, as `profile_crf.py` splits
    a post-hoc refinement: the layer's labelled stages (`crf.*`, forward and backward together),
    the rest (network, loss, optimizer, softmaxes) apart."""
    stages, _, total = profiled(step, STAGES)
    stages["rest"] = total - sum(stages.values())
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paper-batch", type=int, default=1, help="images per paper-network step")
    parser.add_argument("--out", default="outputs/bench_crf_rnn.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = inputs(args.images)
    rows = [bench(n, data, args.repeats) for n in args.iterations]
    steps = {
        "demo": training_steps(NETWORKS["demo"], *demo_batch(), args.repeats),
        "paper": training_steps(NETWORKS["paper"], *paper_batch(args.paper_batch), args.repeats),
    }

    for clock, key in (("wall", "ms"), ("process CPU", "cpu_ms")):
        print(
            f"\n{args.images} VOC images at {SIZE}x{SIZE}, {CLASSES} labels, {args.threads} torch "
            f"thread(s), {clock} ms per image (min of {args.repeats}, mean over images)\n"
        )
        print(
            "| iterations | post-hoc pydensecrf | post-hoc torch | CRF-RNN forward (no grad) "
            "| CRF-RNN forward (graph) | CRF-RNN forward + backward | (fwd + bwd) / fwd "
            "| fwd + bwd, autograd through the gathers | autograd saved MB "
            "| same labels as post-hoc |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for row in rows:
            t = row[key]
            print(
                f"| {row['iterations']} | {t['pydensecrf']:.0f} | {t['torch']:.0f} | "
                f"{t['crf_rnn_forward']:.0f} | {t['crf_rnn_forward_graph']:.0f} | "
                f"{t['crf_rnn_forward_backward']:.0f} | "
                f"{t['crf_rnn_forward_backward'] / t['crf_rnn_forward_graph']:.2f}x | "
                f"{t['through_gathers']:.0f} | "
                f"{row['saved_mb']:.0f} | {100 * row['agree']:.3f}% |"
            )
    print(
        f"\nTraining step, network alone and with the CRF-RNN layer ({args.threads} thread(s), min "
        f"of {args.repeats}), wall (CPU) ms:\n\n"
        "| network | batch | size | labels | network | network + CRF-RNN | ratio |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    for name, row in steps.items():
        (net_wall, net_cpu), (crf_wall, crf_cpu) = row["ms"].values()
        print(
            f"| {name} | {row['batch']} | {row['size'][0]} x {row['size'][1]} | {row['labels']} | "
            f"{net_wall:.0f} ({net_cpu:.0f}) | {crf_wall:.0f} ({crf_cpu:.0f}) | "
            f"{crf_wall / net_wall:.2f}x ({crf_cpu / net_cpu:.2f}x) |"
        )
    print(
        "\nWhere one step with the layer goes (process CPU ms under the profiler; the layer's "
        "stages forward and backward, the rest network, loss, optimizer and softmaxes):\n\n"
        f"| network | {' | '.join(STAGES)} | rest |\n|---|{'---:|' * (len(STAGES) + 1)}"
    )
    for name, row in steps.items():
        print(f"| {name} | {' | '.join(f'{ms:.0f}' for ms in row['stages'].values())} |")
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "threads": args.threads,
        "torch": torch.__version__,
    }
    print(f"\nmachine: {machine}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"machine": machine, "rows": rows, "steps": steps}, indent=2) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
