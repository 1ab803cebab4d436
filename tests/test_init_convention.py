"""Weights carry their input convention: every table row composes with its weights' normalization
and stride placement, a run that contradicts its weights refuses to start, and converted Caffe
files load as initialisation (model.backbone.pretrained / init.path) and as ckpt_path."""

import pytest
import torch
from conftest import REPO
from hydra.utils import instantiate
from omegaconf import OmegaConf

from deeplab.engine.pipeline import train
from deeplab.runtime.config import compose
from deeplab.runtime.errors import UserError
from deeplab.weights.caffe.converter import convert, save
from deeplab.weights.caffe.released_layouts import resnet101_layers, vgg16_layers, write_caffemodel
from deeplab.weights.checkpoint import load_network
from deeplab.weights.conventions import CAFFE, TORCHVISION, check_run

W = 0.0625


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A torchvision-format file per backbone and converted Caffe files (narrow, random)."""
    root = tmp_path_factory.mktemp("weights")
    out = {}
    for name in ("vgg16", "resnet101"):
        out[name] = root / f"{name}-torchvision.pth"
        torch.save({"conv1.weight": torch.zeros(1)}, out[name])  # the format is what counts
    coco = write_caffemodel(
        root / "init.caffemodel", resnet101_layers(W, 91, aspp=False, msc=False)
    )
    out["coco_caffemodel"] = coco
    out["coco"] = root / "init_coco.pth"
    save(convert(coco), out["coco"])
    out["vgg_init"] = root / "vgg16_20M.pth"
    vgg = write_caffemodel(root / "vgg16_20M.caffemodel", vgg16_layers(W, head="init"))
    save(convert(vgg), out["vgg_init"])
    msc = write_caffemodel(root / "train_iter_20000.caffemodel", resnet101_layers(W, 21))
    out["voc_msc"] = root / "voc_msc.pth"
    save(convert(msc), out["voc_msc"])
    return out


def rows(files):
    """(label, overrides, expected convention) for every job of every paper-table experiment."""
    tv_vgg, tv_rn, out = f"init.path={files['vgg16']}", files["resnet101"], []
    sweeps = {
        "table1": ("model", ["fov_7x7_r4", "fov_4x4_r4", "fov_4x4_r8", "largefov"]),
        "table2": ("table2_row", ["step_b30_6k", "poly_b30_6k", "poly_b30_10k", "poly_b10_20k"]),
        "table3": ("model", ["largefov", "aspp_s", "aspp_l"]),
    }
    for table, (group, options) in sweeps.items():
        out += [
            (f"{table} {o}", [f"experiment={table}", f"{group}={o}", tv_vgg], TORCHVISION)
            for o in options
        ]
    table4 = ["experiment=table4", f"imagenet_init={tv_rn}", f"coco_init={files['coco']}"]
    for row, conv in (("base", TORCHVISION), ("msc", TORCHVISION), ("msc_coco", CAFFE)):
        out.append((f"table4 {row}", [*table4, f"table4_row={row}"], conv))
    for row in ("msc_coco_aug", "msc_coco_aug_largefov", "msc_coco_aug_aspp"):
        out.append((f"table4 {row}", [*table4, f"table4_row={row}"], CAFFE))
    weights = [f"imagenet_weights.{b}={files[b]}" for b in ("vgg16", "resnet101")]
    for model in ("largefov", "aspp_l", "fcn8s", "refinenet"):
        out.append(
            (f"compare {model}", ["experiment=compare", f"model={model}", *weights], TORCHVISION)
        )
    return out


def test_every_table_row_normalizes_as_its_weights_expect(files):
    for label, overrides, expected in rows(files):
        cfg = compose("train", overrides)
        assert cfg.model.backbone.pretrained is not None, label
        assert expected.fits(cfg.data.mean, cfg.data.std), (label, cfg.data.mean, cfg.data.std)
        stride = cfg.model.backbone.get("stride_in_1x1")
        assert stride in (None, expected.stride_in_1x1), label
        check_run(cfg)  # the same check train.py runs, on the real files


@pytest.mark.parametrize("key", ["model.backbone.pretrained", "init.path"])
def test_torchvision_weights_with_caffe_normalization_refuse_to_train(files, tmp_path, key):
    # The trap: a torchvision file without its init group, with voc.yaml's Caffe mean and
    # std 1 (58x the inputs torchvision's VGG-16 expects).
    cfg = compose("train", [f"{key}={files['vgg16']}"])
    with pytest.raises(UserError) as err:
        train(cfg, tmp_path)  # refused before anything is built
    message = str(err.value)
    assert "torchvision" in message and "data.std=[1.0, 1.0, 1.0]" in message
    assert "init=torchvision_vgg16" in message and "data.std=[58.395,57.12,57.375]" in message


def test_overriding_data_mean_against_the_init_group_refuses(files):
    cfg = compose(
        "train",
        [
            "experiment=table4",
            "table4_row=msc_coco",
            f"coco_init={files['coco']}",
            "data.std=[58,57,57]",
        ],
    )
    with pytest.raises(UserError, match=r"Caffe conversion of init.caffemodel.*init=caffe"):
        check_run(cfg)


def test_stride_placement_must_match_the_weights(files):
    cfg = compose(
        "train",
        ["backbone=resnet101", "init=caffe", f"init.path={files['coco']}"],
    )
    with pytest.raises(UserError, match="model.backbone.stride_in_1x1=true"):
        check_run(cfg)
    tv = compose(
        "train", ["backbone=resnet101", "init=msra_resnet101", f"init.path={files['resnet101']}"]
    )
    with pytest.raises(UserError, match="model.backbone.stride_in_1x1=false"):
        check_run(tv)


def _model(overrides):
    return instantiate(compose("train", overrides).model)


@pytest.mark.parametrize("source", ["coco", "coco_caffemodel"])
def test_converted_coco_init_starts_a_21_class_msc_aspp_net(files, source):
    net = _model(
        ["model=aspp_l", "backbone=resnet101", "model.msc=true", f"model.width_mult={W}"]
        + ["init=coco_resnet101", f"init.path={files[source]}"]
    )
    coco = torch.load(files["coco"], weights_only=True)["state_dict"]
    ours = net.net.state_dict()
    for key in ("backbone.conv1.weight", "backbone.layer3.22.bn3.running_var"):
        torch.testing.assert_close(ours[key], coco[key])
    # 91 COCO classes do not fit 21: the classifier keeps its own initialisation
    assert ours["head.branches.0.conv.weight"].shape[0] == 21


def test_vgg_init_fc6_fc7_start_every_aspp_branch(files):
    net = _model(
        ["model=aspp_l", f"model.width_mult={W}", "init=caffe", f"init.path={files['vgg_init']}"]
    )
    init = torch.load(files["vgg_init"], weights_only=True)["state_dict"]
    for branch in net.head.branches:
        torch.testing.assert_close(branch.fc6.weight.data, init["head.branches.0.fc6.weight"])
        torch.testing.assert_close(branch.fc7.bias.data, init["head.branches.0.fc7.bias"])


def test_converted_network_loads_as_ckpt_path_and_checks_normalization(files):
    saved = torch.load(files["voc_msc"], weights_only=True)
    cfg = compose("evaluate", [o for o in saved["overrides"] if not o.startswith("tta.")])
    net = load_network(instantiate(cfg.model), files["voc_msc"], 21, cfg.data.mean, cfg.data.std)
    torch.testing.assert_close(
        net.state_dict()["net.backbone.conv1.weight"],
        saved["state_dict"]["net.backbone.conv1.weight"],
    )
    with pytest.raises(ValueError, match="data.std=\\[1.0,1.0,1.0\\]"):
        load_network(
            instantiate(cfg.model),
            files["voc_msc"],
            21,
            TORCHVISION.mean,
            TORCHVISION.std,
        )
    with pytest.raises(UserError, match="backbone initialisation without a classifier"):
        load_network(instantiate(cfg.model), files["vgg_init"], 21, CAFFE.mean, CAFFE.std)


def test_converted_network_refuses_other_atrous_rates_as_ckpt_path(files):
    """Other rates load into the same weight shapes and silently score worse: the converted file
    records its model config, so a mismatch is refused with the override that fixes it."""
    saved = torch.load(files["voc_msc"], weights_only=True)
    cfg = compose("evaluate", [*saved["overrides"], "model.rates=[6,12,18,48]"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    with pytest.raises(UserError, match=r"model.rates=\[6,12,18,24\]"):
        load_network(
            instantiate(cfg.model),
            files["voc_msc"],
            21,
            CAFFE.mean,
            CAFFE.std,
            model,
        )


@pytest.mark.parametrize(("name", "convention"), [("caffe", CAFFE), ("torchvision", TORCHVISION)])
def test_each_convention_is_written_once_in_the_configs_and_agrees_with_the_code(name, convention):
    """conf/normalization/<name>.yaml is what the data sets and `init` options include; its
    numbers are the convention the weight-file checks hold runs to."""
    values = OmegaConf.load(REPO / "conf" / "normalization" / f"{name}.yaml")
    assert tuple(values.mean) == convention.mean and tuple(values.std) == convention.std
    literal = f"mean: {list(values.mean)}".replace("'", "")
    elsewhere = [p for p in (REPO / "conf").rglob("*.yaml") if literal in p.read_text()]
    assert elsewhere == [REPO / "conf" / "normalization" / f"{name}.yaml"]
