"""deeplab.export: ONNX and TorchScript files that compute what predict.py computes."""

import json
import subprocess
import sys
from pathlib import Path

import hydra
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from deeplab.data.classes import SYNTHETIC_CLASSES, voc_palette
from deeplab.data.normalization import normalize
from deeplab.engine.test_time import PadTo, probabilities
from deeplab.export import export, main
from deeplab.runtime.config import compose
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.weights.checkpoint import checkpoint_record

REPO = Path(__file__).resolve().parents[1]
HEADS = ["largefov", "aspp_l", "aspp_s", "fov_7x7_r4", "fov_4x4_r4", "fov_4x4_r8"]
# Every head on VGG-16. On ResNet-101 a head is one k x k atrous classifier per rate: ASPP-L's
# four summed rates stand for the others (a ResNet-101 trace takes seconds, and the suite has a
# time budget); RefineNet is a second ResNet-101 network. MSC wraps either backbone alike.
KINDS = {
    **{f"{head}-vgg16": [f"model={head}"] for head in HEADS},
    "aspp_l-resnet101": ["model=aspp_l", "backbone=resnet101"],
    "largefov-vgg16_bn": ["model=largefov", "backbone=vgg16_bn"],
    "msc-largefov-vgg16": ["model=largefov", "model.msc=true"],
    "fcn8s": ["model=fcn8s"],
    "refinenet": ["model=refinenet"],
}
TOLERANCE = 1e-4  # max abs difference of float32 scores
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)  # not the default: it must travel
SIZES = [(1, 57, 70), (2, 81, 49)]  # neither the trace's 97 x 97 nor any training crop


def random_image(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def make_checkpoint(overrides: list[str], path: Path) -> tuple[torch.nn.Module, Path]:
    """A train.py-style checkpoint of a narrow network with seeded random weights and its
    record, as SegmentationModule saves it. The classifier is scaled to give logits of order
    ten: its 0.01-std init gives logits near 0.03, where argmax near-ties are common."""
    data = ["data=synthetic", f"data.mean=[{','.join(map(str, MEAN))}]"]
    data += [f"data.std=[{','.join(map(str, STD))}]"]
    cfg = compose("train", [*data, "model.width_mult=0.0625", *overrides])
    torch.manual_seed(0)
    net = hydra.utils.instantiate(cfg.model).eval()
    for name, tensor in net.state_dict().items():  # every layer matters, BatchNorm too
        if name.endswith("running_var"):
            tensor.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            tensor.normal_(0, 0.1)
    with torch.no_grad():  # logits of order ten, as a trained network's: few near-ties
        for p in net.classifier_parameters():  # FCN's start at zero
            p.normal_(0, 0.01)
        probe = net(torch.randn(1, 3, 65, 65)).abs().max()
        for p in net.classifier_parameters():  # logits are linear in these
            p.mul_(10 / probe)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    meta = checkpoint_record(net, 7, MEAN, STD, model, None, SYNTHETIC_CLASSES, voc_palette())
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "deeplab": meta}, path)
    return net, path


def predict_masks(net: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """The masks predict.py writes with default settings, one image at a time as it runs."""
    masks = []
    for rgb in images:
        image = normalize(rgb, MEAN, STD)[None]
        masks.append(probabilities(net, image, rgb.shape[:2])[0].argmax(0))
    return torch.stack(masks)


def check_equal(scores: np.ndarray, net: torch.nn.Module, images: np.ndarray) -> None:
    """Scores within TOLERANCE of the torch model's, and their argmax the mask predict.py writes
    wherever that is decided: some pixels are exact ties (bilinear upsampling midway between two
    classes; narrow random networks with constant regions), where float rounding picks either
    class; every pixel that differs must be such a tie."""
    scores = torch.from_numpy(np.asarray(scores))
    n, h, w = images.shape[:3]
    assert scores.shape == (n, 7, h, w) and scores.dtype == torch.float32
    with torch.no_grad():
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
        reference = export_reference(net, batch)
    assert (scores - reference).abs().max() <= TOLERANCE
    differ = scores.argmax(1) != predict_masks(net, images)
    best_two = reference.topk(2, dim=1).values
    margins = (best_two[:, 0] - best_two[:, 1])[differ]
    assert (margins <= 2 * TOLERANCE).all()


def export_reference(net: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """The torch model's logits at the input size, batch at once."""
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    logits = net((batch - mean) / std)
    return torch.nn.functional.interpolate(
        logits, size=batch.shape[-2:], mode="bilinear", align_corners=False
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_and_torchscript_equal_the_torch_model_at_other_sizes(kind, tmp_path):
    net, ckpt = make_checkpoint(KINDS[kind], tmp_path / "net.ckpt")
    export(ckpt, tmp_path / "net.onnx", tmp_path / "net.pt")
    session = onnxruntime.InferenceSession(
        str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"]
    )
    scripted = torch.jit.load(str(tmp_path / "net.pt"))
    for i, size in enumerate(SIZES):
        images = random_image(*size, seed=i)
        batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32)
        check_equal(session.run(["scores"], {"image": batch})[0], net, images)
        with torch.no_grad():
            check_equal(scripted(torch.from_numpy(batch)).numpy(), net, images)


def test_files_carry_class_names_colours_and_source(tmp_path):
    _, ckpt = make_checkpoint(["model=largefov"], tmp_path / "net.ckpt")
    export(ckpt, tmp_path / "net.onnx")
    export(ckpt, tmp_path / "net.pt")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "net.onnx")).metadata_props}
    extra = {"class_names": "", "class_colours": "", "source_checkpoint": ""}
    torch.jit.load(str(tmp_path / "net.pt"), _extra_files=extra)
    for carried in (props, extra):
        assert json.loads(carried["class_names"]) == SYNTHETIC_CLASSES
        assert json.loads(carried["class_colours"]) == voc_palette()[:7].tolist()
        source = json.loads(carried["source_checkpoint"])
        assert source["path"] == str(ckpt.resolve()) and len(source["sha256"]) == 64
    assert json.loads(props["normalization"]) == {"mean": list(MEAN), "std": list(STD)}


def test_bad_inputs_are_one_clear_error(tmp_path):
    with pytest.raises(MissingFileError, match="missing.ckpt does not exist"):
        export(tmp_path / "missing.ckpt", tmp_path / "net.onnx")
    _, ckpt = make_checkpoint(["model=largefov"], tmp_path / "net.ckpt")
    with pytest.raises(UserError, match=r"unknown export format '\.tflite'.*\.onnx.*\.pt"):
        export(ckpt, tmp_path / "net.tflite")
    with pytest.raises(UserError, match="does not exist; create it first"):
        export(ckpt, tmp_path / "no" / "net.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "bare.ckpt")
    with pytest.raises(UserError, match="does not record the model config"):
        export(tmp_path / "bare.ckpt", tmp_path / "net.pt")
    (tmp_path / "cut.ckpt").write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(UserError, match="cut.ckpt cannot be read"):
        export(tmp_path / "cut.ckpt", tmp_path / "net.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare.ckpt", "cut.ckpt", "net.ckpt"]


def test_command_line_writes_the_file_and_names_a_mistake(tmp_path, capsys, monkeypatch):
    _, ckpt = make_checkpoint(["model=largefov"], tmp_path / "net.ckpt")
    cmd = [sys.executable, "-m", "deeplab.export", str(ckpt), str(tmp_path / "net.onnx")]
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'net.onnx'} (ONNX; 7 classes: background, circle" in done.stdout
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main([str(ckpt), str(tmp_path / "net.tflite")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"Error: {tmp_path / 'net.tflite'}: unknown export")


def test_a_converted_caffe_file_exports_what_predict_writes(tmp_path):
    """A `python -m deeplab.convert` file: the network its record builds, its Caffe mean inside,
    generic class names (the file names none), and the test protocol it carries (`tta.pad_to=513`:
    pad with the mean colour, corner-aligned upsampling, crop) inside the graph: the argmax of the
    ONNX and TorchScript scores is the mask `predict.py ckpt_path=<file>` writes."""
    from deeplab.weights.caffe.converter import convert, save
    from deeplab.weights.caffe.released_layouts import vgg16_layers, write_caffemodel

    layers = vgg16_layers(0.0625, num_classes=21, head="aspp")  # VOC's: predict's class count
    converted = convert(write_caffemodel(tmp_path / "aspp.caffemodel", layers))
    assert "tta.pad_to=513" in converted["overrides"]
    save(converted, tmp_path / "aspp.pth")
    props = export(tmp_path / "aspp.pth", tmp_path / "aspp.onnx", tmp_path / "aspp.pt")
    assert json.loads(props["class_names"]) == [f"class_{i}" for i in range(21)]
    assert json.loads(props["test_protocol"]) == {"tta.pad_to": 513}
    image = random_image(1, 45, 60)
    Image.fromarray(image[0]).save(tmp_path / "image.png")  # lossless: predict reads these pixels
    predict = str(REPO / "src" / "predict.py")
    command = [sys.executable, predict, f"ckpt_path={tmp_path / 'aspp.pth'}",
               f"input={tmp_path / 'image.png'}", f"hydra.run.dir={tmp_path / 'pred'}"]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    predicted = torch.from_numpy(np.array(Image.open(tmp_path / "pred" / "masks" / "image.png")))

    net = hydra.utils.instantiate(converted["model"]).eval()
    net.load_state_dict(converted["state_dict"])
    mean = torch.tensor(json.loads(props["normalization"])["mean"]).view(1, 3, 1, 1)
    batch = np.ascontiguousarray(image.transpose(0, 3, 1, 2), dtype=np.float32)
    with torch.no_grad():  # predict's protocol on the torch network: where its argmax is a tie
        reference = PadTo(net, 513)(torch.from_numpy(batch) - mean)  # Caffe convention: std 1
    best_two = reference.topk(2, dim=1).values
    tolerance = 1e-5 * reference.abs().max()  # Caffe's unscaled inputs: logits near 100
    session = onnxruntime.InferenceSession(str(tmp_path / "aspp.onnx"))
    with torch.no_grad():
        scripted = torch.jit.load(str(tmp_path / "aspp.pt"))(torch.from_numpy(batch))
    for scores in (torch.from_numpy(session.run(None, {"image": batch})[0]), scripted):
        assert (scores - reference).abs().max() <= tolerance
        differ = scores.argmax(1)[0] != predicted
        assert ((best_two[0, 0] - best_two[0, 1])[differ] <= 2 * tolerance).all()
        assert differ.float().mean() < 0.01  # the plain upsampling differs on ~45 % of pixels


def test_the_recorded_test_protocol_is_read_as_an_override_is():
    from deeplab.export import recorded_pad_to

    assert recorded_pad_to(["tta.pad_to=321", "++tta.pad_to=513"], "f.pth") == 513
    assert recorded_pad_to(["tta.pad_to=null"], "f.pth") is None
    with pytest.raises(UserError, match=r"f.pth records tta.pad_to=big, which is not a size"):
        recorded_pad_to(["tta.pad_to=big"], "f.pth")
