"""Why end-to-end CRF-RNN training moves a network the way it does: two measurements.

1. Gradient scale (any checkpoint of the CPU demo, training batches, training mode): the norm of
   the loss's gradient on the network's own logits when the loss is on the CRF-RNN layer's
   output (1, 2, 5, 10 mean-field iterations, the layer at its Potts start or as the checkpoint
   trained it) against the network's own loss (`segmentation_loss`, what stage 1 and the control
   train with), and the cosine between the two gradients.
2. Compatibility drift (a stage-2 checkpoint, which holds a trained layer): val mIoU of the
   trained layer at its test iterations, then with its compatibility set back to Potts, then
   with both kernel weights back to their start as well.

    python experiments/crf_rnn_diagnose.py --checkpoint outputs/<run>/checkpoints/last.ckpt

Prints a markdown table per measurement. Uses the run's config (`experiment=crf_rnn_finetune`),
so the data set is the demo's (`data_dir`, default `data/`).
"""

import argparse
import copy

import torch
import torch.nn.functional as F

from deeplab.crf.crf_rnn import CRFRNN, checkpoint_holds_layer
from deeplab.data.metrics import confusion_matrix, scores
from deeplab.engine.losses import segmentation_loss
from deeplab.engine.pipeline import build_network, load_weights
from deeplab.runtime.config import compose, instantiate
from deeplab.weights.checkpoint import network_state, read_checkpoint


def logit_gradients(net, image, mask) -> dict[str, torch.Tensor]:
    """Each loss's gradient on the network's own logits (B, C * h * w) for one batch."""
    with torch.no_grad():
        own = net.net(image)
    own = (own[0] if isinstance(own, list | tuple) else own).detach()
    rgb = image * net.std + net.mean
    layer = net.crf_rnn

    def loss(logits, iterations):
        if iterations is None:
            return segmentation_loss(logits, mask)
        up = F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        saved, layer.iterations = layer.iterations, iterations
        out = layer(up, rgb) if iterations else up
        layer.iterations = saved
        return F.cross_entropy(out, mask, ignore_index=255)

    cases = {
        "network's own loss (labels shrunk), the control's": None,
        "CE on the upsampled logits (no layer)": 0,
        **{f"CE on CRF-RNN, {n} iterations": n for n in (1, 2, 5, 10)},
    }
    grads = {}
    for name, iterations in cases.items():
        logits = own.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(logits, iterations), logits)
        grads[name] = g.flatten(1)
    return grads


def gradient_scale(net, datamodule, batches: int) -> list[tuple]:
    """(loss, mean ||dL/dlogits|| per image, cosine with the network's own loss's gradient)."""
    net.train()
    rows: dict[str, list] = {}
    loader = iter(datamodule.train_dataloader())
    for _ in range(batches):
        batch = next(loader)
        grads = logit_gradients(net, batch["image"], batch["mask"])
        reference = next(iter(grads.values()))
        for name, g in grads.items():
            cosine = F.cosine_similarity(g, reference, 1).mean().item()
            rows.setdefault(name, []).append((g.norm(dim=1).mean().item(), cosine))
    return [
        (name, sum(v[0] for v in vals) / len(vals), sum(v[1] for v in vals) / len(vals))
        for name, vals in rows.items()
    ]


def val_miou(net, datamodule, num_classes: int) -> float:
    """mIoU of the network + layer (eval mode: its test iterations) on the val split."""
    net.eval()
    confusion = confusion_matrix(num_classes, 255)
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            out = net(batch["image"])
            out = F.interpolate(out, size=batch["mask"].shape[-2:], mode="bilinear")
            confusion.update(out.argmax(1), batch["mask"])
    classes = [str(i) for i in range(num_classes)]
    return scores(confusion.compute(), classes)["mIoU"]


def compatibility_drift(net, datamodule, crf_config) -> list[tuple]:
    layer: CRFRNN = net.crf_rnn
    c = layer.num_classes
    potts = 1 - torch.eye(c)
    rows = [("trained layer", val_miou(net, datamodule, c))]
    drift = (layer.compatibility.detach() - potts).abs()
    print(
        f"compatibility: max |mu - Potts| {drift.max():.3f}, mean {drift.mean():.3f}, "
        f"diagonal {layer.compatibility.detach().diag().tolist()}"
    )
    print(f"pos_w {layer.pos_w.detach().tolist()}\nbi_w {layer.bi_w.detach().tolist()}")
    with torch.no_grad():
        layer.compatibility.copy_(potts)
        rows.append(("compatibility back to Potts", val_miou(net, datamodule, c)))
        start = CRFRNN.from_dense_crf(
            instantiate(crf_config), c, kernel_weights=layer.kernel_weights
        )
        layer.pos_w.copy_(start.pos_w)
        layer.bi_w.copy_(start.bi_w)
        rows.append(("... and kernel weights back to their start", val_miou(net, datamodule, c)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data_dir=/data")
    args = parser.parse_args()
    torch.manual_seed(0)
    state = network_state(read_checkpoint(args.checkpoint, "--checkpoint"))
    extra = []
    if any(k.startswith("crf_rnn.pos_w") and state[k].ndim == 2 for k in state):
        extra = ["crf_rnn.kernel_weights=matrix"]
    cfg = compose(
        "train",
        ["experiment=crf_rnn_finetune", f"stage1_checkpoint={args.checkpoint}", *extra]
        + args.overrides,
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    net = build_network(cfg, datamodule)
    load_weights(net, args.checkpoint, "--checkpoint", cfg, datamodule)
    trained = "trained" if checkpoint_holds_layer(state) else "Potts start"
    print(f"\n| gradient on the network's logits (layer: {trained}) | norm | cosine |")
    print("|---|---:|---:|")
    weights = copy.deepcopy(net.state_dict())  # training mode moves BatchNorm's statistics
    for name, norm, cosine in gradient_scale(net, datamodule, args.batches):
        print(f"| {name} | {norm:.4g} | {cosine:.3f} |")
    net.load_state_dict(weights)
    if checkpoint_holds_layer(state):
        rows = compatibility_drift(net, datamodule, cfg.crf)
        print("\n| val, 50 images | mIoU % |\n|---|---:|")
        for name, miou in rows:
            print(f"| {name} | {miou:.2f} |")


if __name__ == "__main__":
    main()
