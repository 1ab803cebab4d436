"""The interfaces of docs/design.md, each exercised as the page words it, so that none can break
without a red test. Deeper checks of each live beside the code (test_models, test_crf, ...)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn

from deeplab.crf import CRFRNN
from deeplab.models import count_parameters
from deeplab.runtime.config import CONF_DIR, compose
from deeplab.runtime.config import instantiate as checked_instantiate
from deeplab.runtime.errors import UserError

REPO = Path(__file__).resolve().parents[1]
MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
DATA_SETS = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))
TABLE1 = {"fov_7x7_r4": 134.3, "fov_4x4_r4": 65.1, "fov_4x4_r8": 65.1, "largefov": 20.5}


@pytest.fixture
def folder_root(tmp_path) -> Path:
    """An own data set (I10) as small as it can be: classes.txt sets the class count."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    return tmp_path


def data_overrides(data: str, folder_root: Path) -> list[str]:
    return [f"data={data}"] + ([f"data.root={folder_root}"] if data == "folder" else [])


# --- I2 Config groups ------------------------------------------------------------------------


def test_i2_every_named_option_of_every_group_composes():
    named = {
        "model": ["fov_7x7_r4", "fov_4x4_r4", "fov_4x4_r8", "largefov", "aspp_s", "aspp_l"]
        + ["fcn8s", "refinenet"],
        "backbone": ["vgg16", "resnet101", "vgg16_bn"],
        "data": ["voc", "context", "person_part", "cityscapes", "synthetic"],
        "schedule": ["poly", "step"],
        "crf": ["none", "deeplab_vgg16", "deeplab_resnet101"],
        "crf_rnn": ["none", "on"],
        "trainer": ["cpu", "gpu", "ddp"],
        "logger": ["wandb", "csv", "tensorboard"],
        "experiment": ["demo", "table1", "table2", "table3", "table4"],
        "debug": ["smoke"],
    }
    for group, options in named.items():
        assert set(options) <= {p.stem for p in (CONF_DIR / group).glob("*.yaml")}, group
        for option in options:
            compose("train", [f"{group}={option}"])
    assert compose("train").model.backbone.name == "vgg16"  # the default, in cfg.model.backbone
    final = compose("train", ["model=aspp_l", "backbone=resnet101"])
    assert final.model.backbone.name == "resnet101" and final.model.rates == [6, 12, 18, 24]
    assert (CONF_DIR / "hydra" / "launcher" / "slurm.yaml").is_file()
    assert compose("train", ["data=voc", "data.aug=true"]).data.aug is True


def test_i1_train_defaults_are_vgg16_largefov_on_voc():
    cfg = compose("train")
    assert (cfg.model.backbone.name, cfg.model.rates, cfg.model.kernel_size) == ("vgg16", [12], 3)
    assert cfg.data._target_.endswith("VOCDataModule")


# --- I3 Model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", DATA_SETS)
@pytest.mark.parametrize("model", MODELS)
def test_i3_instantiate_cfg_model_is_the_network_for_every_option(model, data, folder_root):
    """`hydra.utils.instantiate(cfg.model)` on the composed train config returns the complete
    network as a torch.nn.Module, for every option of conf/model/ with every data set."""
    cfg = compose("train", [f"model={model}", *data_overrides(data, folder_root)])
    with torch.device("meta"):
        net = instantiate(cfg.model)
    assert isinstance(net, nn.Module)
    assert count_parameters(net) > 0


def test_i3_holds_for_an_own_data_set_in_a_fresh_interpreter(folder_root):
    """Nothing but the composing module imported: the class-count resolver of `data=folder`
    comes with the package, so `instantiate(cfg.model)` resolves `num_classes` from classes.txt."""
    code = (
        "import hydra.utils, torch\n"
        "from deeplab.runtime.config import compose\n"
        f"cfg = compose('train', ['data=folder', 'data.root={folder_root}'])\n"
        "with torch.device('meta'):\n"
        "    net = hydra.utils.instantiate(cfg.model)\n"
        "print(isinstance(net, torch.nn.Module), cfg.model.num_classes)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "3"]


@pytest.mark.parametrize("model", MODELS)
def test_i3_and_i12_the_crf_rnn_group_adds_no_key_to_the_model(model):
    plain = compose("train", [f"model={model}"])
    with_layer = compose("train", [f"model={model}", "crf_rnn=on", "crf=deeplab_vgg16"])
    assert with_layer.model == plain.model
    with torch.device("meta"):
        assert isinstance(instantiate(with_layer.model), nn.Module)


@pytest.mark.parametrize("model", ["largefov", "aspp_l", "fov_4x4_r8"])
def test_i3_deeplab_maps_321_to_41_at_output_stride_8(model):
    with torch.device("meta"):
        net = instantiate(compose("train", [f"model={model}"]).model).eval()
    logits = net(torch.empty(1, 3, 321, 321, device="meta"))
    assert tuple(logits.shape) == (1, 21, 41, 41)


@pytest.mark.parametrize(("model", "millions"), TABLE1.items())
def test_i3_table1_parameter_counts(model, millions):
    with torch.device("meta"):
        net = instantiate(compose("train", [f"model={model}"]).model)
    assert round(count_parameters(net) / 1e6, 1) == millions


# --- I4 Data -----------------------------------------------------------------------------------


def test_i4_instantiate_cfg_data_is_a_datamodule_with_dict_batches(tmp_path):
    cfg = compose(
        "train",
        [
            "data=synthetic",
            f"data.root={tmp_path / 'synthetic'}",
            "data.num_train=4",
            "data.num_val=2",
        ]
        + ["data.batch_size=2", "data.num_workers=0"],
    )
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, pl.LightningDataModule)
    datamodule.prepare_data()
    datamodule.setup("fit")
    for batch in (
        next(iter(datamodule.train_dataloader())),
        next(iter(datamodule.val_dataloader())),
    ):
        image, mask, names = batch["image"], batch["mask"], batch["name"]
        assert image.dtype.is_floating_point and image.ndim == 4 and image.shape[1] == 3
        assert mask.dtype == torch.int64 and mask.shape == (len(image), *image.shape[-2:])
        assert isinstance(names, list) and len(names) == len(image)
        assert set(mask.unique().tolist()) <= set(range(cfg.data.num_classes)) | {255}


# --- I5 CRF ------------------------------------------------------------------------------------


def test_i5_instantiate_cfg_crf_is_a_callable_on_numpy_and_torch():
    cfg = compose("train", ["crf=deeplab_vgg16", "crf.backend=torch", "crf.device=cpu"])
    fields = {"iterations", "pos_w", "pos_xy_std", "bi_w", "bi_xy_std", "bi_rgb_std", "backend"}
    assert fields <= set(cfg.crf)
    crf = instantiate(cfg.crf)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    probs = torch.from_numpy(rng.random((3, 20, 24), dtype=np.float32)).softmax(0)
    refined = crf(image, probs.numpy())
    assert isinstance(refined, np.ndarray) and refined.shape == (3, 20, 24)
    np.testing.assert_allclose(refined.sum(0), 1, atol=1e-4)
    refined = crf(image, probs)
    assert isinstance(refined, torch.Tensor) and refined.device == probs.device
    assert compose("train").crf is None  # crf=none, the default


def test_i5_a_bad_crf_value_is_refused_by_the_crf_with_its_key():
    """The CRF owns its values' rules (runtime.config.instantiate passes its UserError on)."""
    with pytest.raises(UserError, match=r"crf.bi_rgb_std=0 is invalid"):
        checked_instantiate(compose("train", ["crf=deeplab_vgg16", "crf.bi_rgb_std=0"]).crf)


# --- I12 Trainable CRF -------------------------------------------------------------------------


def test_i12_crfrnn_signature_and_shapes():
    layer = CRFRNN(4, 2, 3.0, 3.0, 4.0, 10.0, 20.0, "per_pixel")
    assert isinstance(layer, nn.Module)
    logits = torch.randn(2, 4, 9, 11)
    images = torch.rand(2, 3, 9, 11) * 255
    assert layer(logits, images).shape == (2, 4, 9, 11)


def test_i12_the_group_takes_its_kernels_from_crf():
    cfg = compose("train", ["crf_rnn=on", "crf=deeplab_vgg16", "crf.bi_xy_std=30"])
    layer = instantiate(cfg.crf_rnn)
    assert isinstance(layer, CRFRNN) and layer.bi_xy_std == 30 and layer.num_classes == 21


# --- I6 Results and I9 Errors: the scripts themselves --------------------------------------------


def run_script(args: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src"), **env}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_i6_train_and_evaluate_write_metrics_json_with_the_keys(tmp_path):
    smoke = ["debug=smoke", "data=synthetic", "logger=csv", "crf=synthetic", "crf.backend=torch"]
    run = tmp_path / "train"
    result = run_script([str(REPO / "src" / "train.py"), *smoke, f"hydra.run.dir={run}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for prefix in ("val", "val_crf"):
        for key in ("mIoU", "pixel_acc", "mean_acc", "fwIoU"):
            assert 0 <= metrics[f"{prefix}/{key}"] <= 100
        assert set(metrics[f"{prefix}/IoU"]) == {
            "background", "circle", "square", "triangle", "cross", "ring", "diamond"
        }  # fmt: skip
    assert metrics["params"] > 0 and metrics["train_img_per_s"] > 0

    evaluated = tmp_path / "evaluate"
    ckpt = run / "checkpoints" / "last.ckpt"
    args = [str(REPO / "src" / "evaluate.py"), f"ckpt_path={ckpt}", f"hydra.run.dir={evaluated}"]
    result = run_script(args, tmp_path)  # I11: no further override
    assert result.returncode == 0, result.stderr[-3000:]
    scored = json.loads((evaluated / "metrics.json").read_text())
    assert scored["val/mIoU"] == pytest.approx(metrics["val/mIoU"])


@pytest.mark.slow
def test_i9_a_bad_value_prints_error_alone_and_exits_2(tmp_path):
    args = [str(REPO / "src" / "train.py"), "data=synthetic", "crf=synthetic", "crf.bi_rgb_std=0"]
    result = run_script(args, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("Error: crf.bi_rgb_std=0 is invalid")
    assert "Traceback" not in result.stderr
    shown = run_script(args, tmp_path, HYDRA_FULL_ERROR="1")
    assert shown.returncode != 0 and "Traceback" in shown.stderr  # HYDRA_FULL_ERROR=1: shown too
