"""A user's mistakes (design.md I9): config values refused before anything is built, unreadable
files named, checkpoints of another network refused with overrides that work, and the command-line
tools printing the message alone."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from PIL import Image

from deeplab.crf.probs_io import load_probabilities, save_probabilities
from deeplab.crf.search import main as crf_search
from deeplab.data.dataset import read_ids
from deeplab.engine.pipeline import check_run_config, evaluate, model_config, train
from deeplab.engine.prediction import predict
from deeplab.runtime.cli import check_command_line, reports_user_errors
from deeplab.runtime.config import compose
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.tables.runs import load_jobs
from deeplab.weights.checkpoint import checkpoint_record, load_network
from deeplab.weights.pretrained import read_state_dict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["data=synthetic", "debug=smoke", "data.num_train=8", "data.num_val=3"]


# --- config values ----------------------------------------------------------------------------

BAD_VALUES = [
    ("train", "data.std=[0,0,0]"),
    ("train", "data.std=[1,-1,1]"),
    ("train", "data.mean=[1,2]"),
    ("train", "data.mean=[1,2,x]"),
    ("train", "data.crop_size=-5"),
    ("train", "data.crop_size=0"),
    ("train", "data.crop_size=12.5"),
    ("train", "data.limit_train=0"),
    ("train", "data.limit_val=-1"),
    ("train", "data.batch_size=0"),
    ("train", "data.val_batch_size=0"),
    ("train", "data.num_workers=-1"),
    ("train", "data.scale_range=[1.5,0.5]"),
    ("train", "data.scale_range=[0,1]"),
    ("train", "data.scales=[]"),
    ("train", "data.random_scale=random"),
    ("train", "data=synthetic data.num_train=0"),
    ("train", "optim.lr=0"),
    ("train", "optim.lr=-1e-3"),
    ("train", "optim.momentum=1.5"),
    ("train", "optim.weight_decay=-1"),
    ("train", "optim.name=adam"),
    ("train", "trainer.max_steps=0"),
    ("train", "trainer.max_steps=-1"),
    ("train", "trainer.accumulate_grad_batches=0"),
    ("train", "model.rates=[]"),
    ("train", "model.rates=[0,12]"),
    ("train", "model.kernel_size=0"),
    ("train", "model.width_mult=0"),
    ("train", "model.dropout=1.0"),
    ("train", "model.msc=true model.msc_scales=[0.5,0.75]"),
    ("train", "model.msc=true model.msc_scales=[]"),
    ("train", "model=refinenet model.widths=[512,256,256]"),
    ("train", "crf_rnn=on crf=deeplab_vgg16 crf_rnn.test_iterations=-1"),
    ("train", "optim.crf_rnn_lr_mult=-1"),
    ("train", "schedule.power=0"),
    ("train", "val_samples=-1"),
    ("train", "seed=-1"),
    ("train", "speed.atrous_mode=fast"),
    ("train", "crf=deeplab_vgg16 crf.iterations=-1"),
    ("train", "crf=deeplab_vgg16 crf.bi_xy_std=0"),
    ("train", "crf=deeplab_vgg16 crf.backend=cuda"),
    ("evaluate", "tta.scales=[]"),
    ("evaluate", "tta.scales=[0,1]"),
    ("evaluate", "tta.overlap=1.0"),
    ("evaluate", "tta.tile=0"),
    ("predict", "tta.scales=[]"),
    ("predict", "data.std=[0,0,0]"),
    ("crf_eval", "limit=0"),
    ("describe", "model.rates=[-12]"),
]


@pytest.mark.parametrize("name, override", BAD_VALUES)
def test_bad_config_values_are_refused_naming_the_key(name, override):
    required = {"evaluate": ["ckpt_path=x"], "predict": ["ckpt_path=x", "input=x"]}
    required["crf_eval"] = ["probs_dir=x"]
    cfg = compose(name, [*required.get(name, []), *override.split()])
    key = override.split()[-1].split("=")[0]
    with pytest.raises(UserError, match=rf"^{re.escape(key)}=.* is invalid: it must be .*e\.g\."):
        check_run_config(cfg)  # the config checks, then the rules the components own


def test_required_values_left_unset_are_named():
    with pytest.raises(UserError, match=r"^ckpt_path, input must be set: pass ckpt_path=.* input="):
        check_config(compose("predict"))
    with pytest.raises(UserError, match=r"^probs_dir must be set"):
        check_config(compose("crf_eval"))
    table4 = ["experiment=table4", "table4_row=msc_coco"]
    with pytest.raises(UserError, match=r"^coco_init \(for model.backbone.pretrained\) must be"):
        check_config(compose("train", table4))
    check_config(compose("train", ["experiment=table4", "table4_row=msc"]))  # does not use it


def test_every_shipped_config_passes():
    for name, overrides in [
        ("train", []),
        ("train", ["experiment=demo"]),
        ("train", ["model=fcn8s", "debug=smoke"]),
        ("train", ["model=refinenet", "data=cityscapes", "crf=deeplab_resnet101"]),
        ("evaluate", ["ckpt_path=x", "model=aspp_l", "backbone=resnet101", "data=context"]),
        ("predict", ["ckpt_path=x", "input=x", "data=person_part"]),
        ("crf_eval", ["probs_dir=x"]),
        ("describe", ["model=fov_7x7_r4"]),
    ]:
        check_config(compose(name, overrides))


@pytest.mark.parametrize(
    "run, override",
    [(train, "data.std=[0,0,0]"), (evaluate, "tta.scales=[]"), (train, "data.limit_train=0")],
)
def test_pipelines_check_the_config_before_building_anything(tmp_path, run, override):
    """Before: a NaN loss, a ZeroDivisionError, "num_samples should be a positive integer"."""
    name = "train" if run is train else "evaluate"
    extra = ["logger=csv"] if name == "train" else [f"ckpt_path={tmp_path / 'x.ckpt'}"]
    cfg = compose(name, [*SMOKE, f"data_dir={tmp_path}", *extra, override])
    with pytest.raises(UserError, match=re.escape(override.split("=")[0])):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "synthetic").exists()  # refused before the data set was built


# --- unreadable files --------------------------------------------------------------------------


def broken_files(tmp_path) -> dict:
    """A text file, an empty file and a truncated zip (what torch and numpy.savez write)."""
    torch.save({"w": torch.zeros(64)}, tmp_path / "whole.pt")
    files = {
        "text": b"this is not a checkpoint\n",
        "empty": b"",
        "truncated": (tmp_path / "whole.pt").read_bytes()[:200],
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return {name: tmp_path / name for name in files}


def test_unreadable_checkpoints_and_weights_are_named(tmp_path):
    cfg = compose("evaluate", [*SMOKE, "ckpt_path=x"])
    for path in broken_files(tmp_path).values():
        net = instantiate(cfg.model)
        with pytest.raises(UserError, match=rf"checkpoint {re.escape(str(path))} cannot be read"):
            load_network(net, path, 7, cfg.data.mean, cfg.data.std, model_config(cfg))
        with pytest.raises(UserError, match=rf"pretrained weights file {re.escape(str(path))}"):
            read_state_dict(path)
    with pytest.raises(MissingFileError, match="set ckpt_path to a .ckpt"):
        load_network(net, tmp_path / "absent.ckpt", 7, cfg.data.mean, cfg.data.std)
    torch.save([1, 2, 3], tmp_path / "list.ckpt")
    with pytest.raises(UserError, match="holds a list, not a checkpoint"):
        load_network(net, tmp_path / "list.ckpt", 7, cfg.data.mean, cfg.data.std)


def test_resume_from_an_unreadable_checkpoint_is_named_before_training(tmp_path):
    for path in broken_files(tmp_path).values():
        cfg = compose("train", [*SMOKE, f"data_dir={tmp_path}", "logger=csv", f"ckpt_path={path}"])
        with pytest.raises(UserError, match=rf"checkpoint {re.escape(str(path))} cannot be read"):
            train(cfg, tmp_path / "run")
    assert not (tmp_path / "synthetic").exists()


def test_unreadable_split_lists_and_job_configs_are_named(tmp_path):
    (tmp_path / "train.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UserError, match=r"split list .*train\.txt cannot be read"):
        read_ids(tmp_path / "train.txt")
    job = tmp_path / "sweep" / "0" / ".hydra"
    job.mkdir(parents=True)
    (job / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=r"job config .*config\.yaml cannot be read"):
        load_jobs(tmp_path / "sweep")


def test_corrupt_probability_files_are_named(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (4, 5, 3), dtype=np.uint8)
    probs = rng.dirichlet(np.ones(3), (4, 5)).transpose(2, 0, 1).astype(np.float32)
    good = save_probabilities(tmp_path / "good", image, probs, np.zeros((4, 5), np.uint8))
    assert load_probabilities(good)[1].shape == (3, 4, 5)
    pickled = tmp_path / "pickled.npz"
    np.save(pickled.with_suffix(""), np.array([{"a": 1}], dtype=object))  # writes pickled.npy
    pickled.write_bytes(pickled.with_suffix(".npy").read_bytes())
    corrupt = {**broken_files(tmp_path), "pickled": pickled, "cut": tmp_path / "cut.npz"}
    corrupt["cut"].write_bytes(good.read_bytes()[:-40])
    for path in corrupt.values():
        with pytest.raises(UserError, match=rf"probabilities file {re.escape(str(path))} cannot"):
            load_probabilities(path)


# --- checkpoints of another network -------------------------------------------------------------


def save_checkpoint(path, overrides: list[str]) -> None:
    """A checkpoint as train.py writes it (weights + recorded run config), without training."""
    cfg = compose("train", [*SMOKE, *overrides])
    net = instantiate(cfg.model)
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    meta = checkpoint_record(
        net, cfg.data.num_classes, cfg.data.mean, cfg.data.std, model_config(cfg)
    )
    torch.save(
        {"pytorch-lightning_version": pl.__version__, "state_dict": state, "deeplab": meta}, path
    )


def load(overrides: list[str]) -> torch.nn.Module:
    cfg = compose("evaluate", [*SMOKE, *overrides])
    check_config(cfg)
    net = instantiate(cfg.model)
    data = cfg.data
    return load_network(
        net, cfg.ckpt_path, data.num_classes, data.mean, data.std, model_config(cfg)
    )


@pytest.mark.parametrize(
    "trained, evaluated, fix",
    [
        ([], ["model.rates=[24]"], "model.rates=[12]"),  # same weight shapes, other results
        ([], ["backbone=resnet101"], "backbone=vgg16"),  # not model.backbone.name=vgg16
        ([], ["model=aspp_l"], "model=largefov"),
        (["backbone=resnet101", "model=aspp_l"], [], "backbone=resnet101"),
        (["backbone=vgg16_bn", "model.width_mult=0.125"], [], "backbone=vgg16_bn"),
        (["model=fcn8s"], [], "model=fcn8s"),
        (["model=refinenet"], ["model=largefov"], "model=refinenet"),
        (["backbone=resnet101", "model.backbone.stride_in_1x1=true"], ["backbone=resnet101"],
         "model.backbone.stride_in_1x1=true"),
    ],
)  # fmt: skip
def test_another_model_config_is_refused_and_the_printed_fix_loads(
    tmp_path, trained, evaluated, fix
):
    ckpt = tmp_path / "trained.ckpt"
    save_checkpoint(ckpt, trained)
    overrides = [f"ckpt_path={ckpt}", *evaluated]
    with pytest.raises(UserError, match="trained with another model config") as error:
        load(overrides)
    hints = re.findall(r'"([^"]+)"', str(error.value))
    assert fix in hints and not any(h.startswith("model.backbone.name=") for h in hints)
    load(overrides + hints)  # the printed command composes and loads


def test_training_only_fields_matter_on_resume_only(tmp_path):
    ckpt = tmp_path / "trained.ckpt"
    save_checkpoint(ckpt, ["model.dropout=0.0"])
    load([f"ckpt_path={ckpt}"])  # evaluation: dropout is off anyway
    cfg = compose("train", [*SMOKE, f"data_dir={tmp_path}", "logger=csv", f"ckpt_path={ckpt}"])
    with pytest.raises(
        UserError, match=r'model.dropout 0.0 \(this run: 0.5\).*"model.dropout=0.0"'
    ):
        train(cfg, tmp_path / "resume")


def test_resume_with_other_atrous_rates_is_refused(tmp_path):
    ckpt = tmp_path / "trained.ckpt"
    save_checkpoint(ckpt, [])
    cfg = compose(
        "train",
        [*SMOKE, f"data_dir={tmp_path}", "logger=csv", f"ckpt_path={ckpt}", "model.rates=[24]"],
    )
    with pytest.raises(
        UserError, match=r'model.rates \[12\] \(this run: \[24\]\).*"model.rates=\[12\]"'
    ):
        train(cfg, tmp_path / "resume")


def test_checkpoints_without_a_recorded_config_still_load(tmp_path):
    ckpt = tmp_path / "old.ckpt"
    save_checkpoint(ckpt, [])
    old = torch.load(ckpt, weights_only=False)
    del old["deeplab"]["model"]["msc_scales"]  # a field the configs gained later
    torch.save(old, ckpt)
    load([f"ckpt_path={ckpt}"])
    with pytest.raises(UserError, match="model.rates"):
        load([f"ckpt_path={ckpt}", "model.rates=[24]"])  # the fields both have still count
    del old["deeplab"]["model"]
    torch.save(old, ckpt)
    load([f"ckpt_path={ckpt}", "model.rates=[24]"])  # nothing to compare with: loads


def test_predict_reads_phone_photos_upright(tmp_path):
    ckpt = tmp_path / "trained.ckpt"
    save_checkpoint(ckpt, [])
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 40 wide x 24 high, shown 24 wide x 40 high
    Image.new("RGB", (40, 24), (90, 20, 200)).save(tmp_path / "photo.jpg", exif=exif.tobytes())
    Image.new("RGBA", (16, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    model = ["data=synthetic", "model.width_mult=0.0625", f"ckpt_path={ckpt}"]
    for name, size in (("photo.jpg", (24, 40)), ("clear.png", (16, 8))):
        cfg = compose("predict", [*model, f"input={tmp_path / name}", f"output_dir={tmp_path}"])
        (mask,) = predict(cfg, tmp_path)
        assert Image.open(mask).size == size


# --- the command line: the message alone ---------------------------------------------------------


def run_cli(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.path.join(REPO, "src")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_user_errors_print_the_message_alone_and_exit_2(tmp_path):
    """Through Hydra (train.py; every script has the same decorator) and a `python -m` tool."""
    train_py = [f"{REPO}/src/train.py", "data=synthetic", "data.std=[0,0,0]"]
    result = run_cli(train_py, tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Error: data.std=[0,0,0] is invalid" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_python_m_tools_print_the_message_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        crf_search([str(tmp_path / "absent")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"Error: probs_dir {tmp_path / 'absent'} does not")


def test_the_wrapper_ends_user_errors_only(capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    @reports_user_errors
    def fails(err):
        raise err

    with pytest.raises(SystemExit) as exit_info:
        fails(UserError("data.std=[0,0,0] is invalid"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "Error: data.std=[0,0,0] is invalid\n"
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        fails(RuntimeError("a bug"))
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingFileError):  # the traceback on request
        fails(MissingFileError("x.ckpt does not exist"))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["data.bach_size=4"], "data.bach_size: no such key in the config; did you mean "
         "data.batch_size"),
        (["model=largefvo"], "model=largefvo: no such option in model/; did you mean "
         "model=largefov? options: aspp_l, aspp_s,"),
        (["-m", "model=largefov,largefvo"], "model=largefvo: no such option"),  # a sweep's value
        (["crf=deeplab_vgg16", "crf.bi_ww=3"], "crf.bi_ww: no such key in the config; did you "
         "mean crf.bi_w?"),
    ],
)  # fmt: skip
def test_hydra_composition_errors_are_one_line_with_the_nearest_names(argv, expected, capsys):
    with pytest.raises(SystemExit) as stopped:
        check_command_line(argv, "train")
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"Error: {expected}") and err.count("\n") == 1, err
    check_command_line(["-m", "model=largefov,aspp_l", "data.batch_size=4"], "train")  # composes


@pytest.mark.slow
def test_train_py_exits_2_on_a_misspelt_key_or_option(tmp_path):
    for override, expected in (
        ("data.bach_size=4", "Error: data.bach_size: no such key in the config; did you mean "
         "data.batch_size"),
        ("model=largefvo", "Error: model=largefvo: no such option in model/; did you mean "
         "model=largefov?"),
    ):  # fmt: skip
        result = run_cli([f"{REPO}/src/train.py", override], tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(expected) and result.stderr.count("\n") == 1, result.stderr
