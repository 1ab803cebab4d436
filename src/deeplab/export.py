"""Export a trained network for use outside this repository: ONNX or TorchScript.

    python -m deeplab.export CKPT OUT.onnx     # onnxruntime, TensorRT, OpenVINO, ...
    python -m deeplab.export CKPT OUT.pt       # torch.jit.load, no repository code needed
    python -m deeplab.export CKPT OUT.onnx OUT.pt   # both, from one trace

CKPT is a checkpoint of `train.py` or a file of `python -m deeplab.convert`; everything the
export needs (network config, weights, normalization, classes) is read from it, with
`weights_only=True` (no pickled code runs). The exported model takes a float32 RGB batch
(N, 3, H, W) with values 0-255, normalizes it inside, and returns (N, C, H, W) scores (logits
bilinearly upsampled to the input size): their argmax over C is the mask `predict.py` writes for
the same file with its default settings (no CRF). A file that carries the released test nets'
protocol (`tta.pad_to=513`: every converted Caffe file) has it inside the graph, as predict
applies it. Any N, H and W work (up to `pad_to` where it is set; docs/export.md).

Both formats come from one trace of the network (`torch.jit.trace`; ONNX through torch's
TorchScript-based exporter, which needs no extra package). Tracing records the sizes the networks
compute from their input (MSC's scaled sizes, FCN's crops, the final upsampling) as operations on
the input's shape, so a trace at one size runs at any other; tests/test_export.py checks this for
every model kind at sizes other than the traced one.
"""

import argparse
import copy
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeplab.crf.crf_rnn import checkpoint_holds_layer
from deeplab.data.classes import voc_palette
from deeplab.engine.test_time import PadTo
from deeplab.models.atrous import set_atrous_mode
from deeplab.runtime.cli import reports_user_errors
from deeplab.runtime.config import instantiate, override_key
from deeplab.runtime.errors import UserError
from deeplab.runtime.user_files import read_file
from deeplab.weights.checkpoint import check_compatible, network_state
from deeplab.weights.conventions import converted_checkpoint, is_converted
from deeplab.weights.handed_config import check_finite, check_record, project_model_config
from deeplab.weights.legacy_records import current_record

FORMATS = {".onnx": "ONNX", ".pt": "TorchScript"}
TRACE_SIZE = 97  # any size works; odd and small: every network here accepts it, quickly
ONNX_OPSET = 17


class Exported(nn.Module):
    """float32 RGB (N, 3, H, W) on 0-255 -> (N, C, H, W) logits at the input size, exactly as
    `predict.py` computes them: `normalize`, the network, bilinear upsampling with half-pixel
    centres (`deeplab.engine.test_time.resize`); or, where the file carries the released test
    nets' protocol (`tta.pad_to`, converted Caffe files), predict's `PadTo`: pad to `pad_to` with
    the mean colour (0 after normalizing), corner-aligned upsampling, crop back."""

    def __init__(self, net: nn.Module, mean, std, pad_to: int | None = None):
        super().__init__()
        self.net = (PadTo(net, pad_to) if pad_to else net).eval()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        logits = self.net((image - self.mean) / self.std)
        # Always resize (identity at equal sizes): a traced size check would fix the branch.
        return F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)


def recorded_pad_to(overrides: list[str], source) -> int | None:
    """The `tta.pad_to` a file's recorded overrides set (`tta.pad_to=` or `++tta.pad_to=`; the
    last one wins, as on a command line); None where they set none or `null`."""
    values = [o.split("=", 1)[1] for o in overrides if "=" in o and override_key(o) == "tta.pad_to"]
    if not values or values[-1] in ("null", "None", ""):
        return None
    if not values[-1].isdigit() or int(values[-1]) < 1:
        raise UserError(
            f"{source} records tta.pad_to={values[-1]}, which is not a size in pixels: convert "
            "or train the file again"
        )
    return int(values[-1])


def read_weights(path: str | Path) -> tuple[dict, dict]:
    """(the network's state dict, its `checkpoint_record`) of a train.py checkpoint or a
    converted Caffe file, loaded with weights_only=True; its record read as data and its weights
    finite (`handed_config`)."""
    fix = "pass a .ckpt written by train.py or a .pth written by python -m deeplab.convert"
    checkpoint = read_file(
        lambda p: torch.load(p, map_location="cpu", weights_only=True), path, "checkpoint", fix
    )
    if not isinstance(checkpoint, dict):
        raise UserError(f"checkpoint {path} holds a {type(checkpoint).__name__}: {fix}")
    if is_converted(checkpoint):
        check_record(checkpoint, f"checkpoint {path}")
        state, meta = converted_checkpoint(checkpoint, path)
        meta = {**meta, "overrides": list(checkpoint["overrides"])}  # its test protocol
    else:
        meta = current_record(checkpoint.get("deeplab"))
        if not meta or "model" not in meta:
            raise UserError(
                f"checkpoint {path} does not record the model config it was trained with (a "
                "bare state dict, or written by an older train.py), so its network cannot be "
                f"rebuilt: {fix}"
            )
        check_record(meta, f"checkpoint {path}")
        state = network_state(checkpoint)
    check_finite(state, f"checkpoint {path}")
    return state, meta


def rebuild(state: dict, meta: dict, source) -> nn.Module:
    """The recorded network with the checkpoint's weights, in eval mode, built by the project's
    own model option that the record names (`project_model_config`: never a builder the file
    chooses). Weight-file options (backbone.pretrained, FCN's init_from) are dropped: the
    checkpoint holds the trained weights."""
    if "model" not in meta:
        raise UserError(
            f"{source} was converted before converted files recorded their model config: "
            "convert the .caffemodel again with python -m deeplab.convert"
        )
    if checkpoint_holds_layer(state):
        raise UserError(
            f"{source} ends in a CRF-RNN layer (crf_rnn=on), which export does not "
            "cover: use python src/predict.py ckpt_path=... for its masks"
        )
    model = project_model_config(copy.deepcopy(meta["model"]), source)
    model["backbone"] = {**model.get("backbone", {}), "pretrained": None}
    if "init_from" in model:
        model["init_from"] = None
    net = instantiate(model)
    check_compatible(state, net, meta, meta["num_classes"], source, model)
    net.load_state_dict(state)
    set_atrous_mode(net, "dilation")  # the plain graph; space-to-batch is a speed option
    return net.eval()


def recorded_classes(meta: dict) -> dict:
    """{"names": [...], "colours": [[r, g, b], ...]} as the checkpoint records them; files
    without a record (converted Caffe files) get `class_<i>` and the VOC palette's colours."""
    count = meta["num_classes"]
    classes = meta.get("classes")
    if classes:
        return {"names": list(classes["names"]), "colours": [list(c) for c in classes["colours"]]}
    return {
        "names": [f"class_{i}" for i in range(count)],
        "colours": voc_palette()[:count].tolist(),
    }


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def metadata(meta: dict, source: Path, pad_to: int | None = None) -> dict[str, str]:
    """What the exported file carries beside the graph; every value a JSON string."""
    classes = recorded_classes(meta)
    normalization = meta.get("normalization", {})
    size = f"H, W <= {pad_to} (padded to {pad_to} inside, tta.pad_to)" if pad_to else "any H, W"
    return {
        "class_names": json.dumps(classes["names"]),
        "class_colours": json.dumps(classes["colours"]),
        "source_checkpoint": json.dumps({"path": str(source.resolve()), "sha256": sha256(source)}),
        "normalization": json.dumps(normalization),
        "model": json.dumps(meta.get("model")),
        "input": json.dumps(f"image: float32 RGB (N, 3, H, W), values 0-255, any N, {size}"),
        "test_protocol": json.dumps({"tta.pad_to": pad_to}),
        "output": json.dumps("scores: float32 (N, C, H, W) logits; argmax over C = the mask"),
    }


def exportable(path: str | Path) -> tuple[Exported, dict[str, str]]:
    """The checkpoint's network wrapped for export, and the metadata the file will carry."""
    path = Path(path)
    state, meta = read_weights(path)
    net = rebuild(state, meta, path)
    norm = meta.get("normalization")
    if norm is None:
        raise UserError(
            f"checkpoint {path} does not record its input normalization (data.mean, data.std): "
            "export a checkpoint written by train.py"
        )
    pad_to = recorded_pad_to(meta.get("overrides") or [], path)
    exported = Exported(net, norm["mean"], norm["std"], pad_to).eval()
    return exported, metadata(meta, path, pad_to)


def traced(module: Exported) -> torch.jit.ScriptModule:
    example = torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE) * 255
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape arithmetic: recorded
        return torch.jit.trace(module, example, check_trace=False)


def save_torchscript(graph: torch.jit.ScriptModule, props: dict[str, str], out: Path) -> None:
    """TorchScript; `torch.jit.load(out, _extra_files={"class_names": ""})` reads the metadata."""
    torch.jit.save(graph, str(out), _extra_files=props)


def save_onnx(graph: torch.jit.ScriptModule, props: dict[str, str], out: Path) -> None:
    """ONNX with dynamic batch, height and width; the metadata in `metadata_props`."""
    import onnx  # an export-only dependency

    example = torch.rand(1, 3, TRACE_SIZE, TRACE_SIZE) * 255
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        torch.onnx.export(
            graph,
            (example,),
            str(out),
            dynamo=False,  # the TorchScript-based exporter: no onnxscript needed
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": axes, "scores": axes},
            opset_version=ONNX_OPSET,
        )
    model = onnx.load(str(out))
    onnx.helper.set_model_props(model, props)
    onnx.save(model, str(out))


def check_output(out: Path) -> None:
    if out.suffix not in FORMATS:
        raise UserError(
            f"{out}: unknown export format {out.suffix or '(no extension)'!r}; name the output "
            f"file .onnx (ONNX) or .pt (TorchScript)"
        )
    if out.is_dir():
        raise UserError(f"{out} is a directory: name the output file, e.g. {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UserError(f"{out}: folder {out.parent} does not exist; create it first")


def export(checkpoint: str | Path, *outputs: str | Path) -> dict[str, str]:
    """Write each of `outputs` (.onnx or .pt) from `checkpoint` (one trace for all), each
    complete or not at all; returns the metadata the files carry."""
    outputs = tuple(Path(o) for o in outputs)
    for out in outputs:
        check_output(out)
    module, props = exportable(checkpoint)
    graph = traced(module)
    for out in outputs:
        # a name of this process's own (exporters pick the format by suffix)
        tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
        try:
            (save_onnx if out.suffix == ".onnx" else save_torchscript)(graph, props, tmp)
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return props


@reports_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deeplab.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", type=Path, help="a train.py .ckpt or a converted .pth")
    parser.add_argument("outputs", type=Path, nargs="+", help="OUT.onnx and/or OUT.pt")
    args = parser.parse_args(argv)
    names = json.loads(export(args.checkpoint, *args.outputs)["class_names"])
    for out in args.outputs:
        print(f"wrote {out} ({FORMATS[out.suffix]}; {len(names)} classes: {', '.join(names)})")


if __name__ == "__main__":
    main()
