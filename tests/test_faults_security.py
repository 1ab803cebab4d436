"""Security and faults (docs/faults.md 'Threat model'): files a user was handed cannot run code,
data cannot write outside its run, stops leave no workers, locks or half files behind."""

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, file_size_limit
from omegaconf import OmegaConf
from PIL import Image
from test_predict import MODEL, untrained_checkpoint

from deeplab.crf.probs_io import load_probabilities, save_probabilities
from deeplab.data.datamodule import SyntheticDataModule
from deeplab.data.dataset import read_ids, read_mask
from deeplab.data.images import read_rgb
from deeplab.engine.checkpoint_io import AtomicCheckpointIO
from deeplab.engine.pipeline import build_network, evaluate, load_weights, train
from deeplab.engine.prediction import SkippedImages, predict
from deeplab.export import export
from deeplab.export import main as export_main
from deeplab.runtime import atomic as run_atomic
from deeplab.runtime import run_lock
from deeplab.runtime.atomic import check_writable, written_atomically
from deeplab.runtime.cli import check_command_line
from deeplab.runtime.config import compose, instantiate
from deeplab.runtime.errors import UserError
from deeplab.weights import conventions
from deeplab.weights.caffe.caffe_pb import BlobProto
from deeplab.weights.caffe.caffemodel import blob_array
from deeplab.weights.checkpoint import (
    check_class_list,
    check_crf_kernels,
    check_readable,
    read_checkpoint,
)
from deeplab.weights.checkpoint_overrides import with_checkpoint_overrides
from deeplab.weights.pretrained import read_weights

# --- handed files: read as data, never as code ----------------------------------------------------


class Payload:
    """What an attacker pickles: unpickling it calls os.system, which creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def payload_files(tmp_path):
    """The payload as torch saves a checkpoint (zip) and as a bare pickle (torch's old format)."""
    marker = tmp_path / "code-ran"
    zipped, bare = tmp_path / "evil.ckpt", tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}, zipped)
    bare.write_bytes(pickle.dumps({"w": Payload(marker)}, protocol=2))
    return marker, [zipped, bare]


READERS = [
    ("ckpt_path", read_checkpoint),
    ("resume", check_readable),
    ("pretrained", read_weights),
    ("convention", conventions.of_file),
]


@pytest.mark.parametrize("reader", [r for _, r in READERS], ids=[n for n, _ in READERS])
def test_a_pickle_payload_is_refused_without_running(tmp_path, reader):
    marker, files = payload_files(tmp_path)
    for path in files:
        if reader is check_readable and path.suffix == ".pth":
            continue  # not a zip: refused before unpickling, as truncated
        with pytest.raises(UserError) as refused:
            reader(path)
        message = str(refused.value)
        assert str(path) in message and "refused" in message and "posix.system" in message
        assert "weights_only" not in message and "\n" not in message
    assert not marker.exists()


def test_saved_probabilities_with_objects_are_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "x.npz"
    np.savez(path, image=np.array([Payload(marker)], dtype=object), probs=0, mask=0)
    with pytest.raises(UserError, match=f"{path}.*cannot be read.*allow_pickle"):
        load_probabilities(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content", [b"", b"not weights at all\n", b"PK\x03\x04" + b"\0" * 40], ids=str
)
def test_a_pretrained_file_that_is_not_weights_gets_one_message(tmp_path, content):
    """conventions.check_run reads it first (train.py), then the network's builder."""
    path = tmp_path / "vgg16.pth"
    path.write_bytes(content)
    for reader in (conventions.of_file, read_weights):
        with pytest.raises(UserError) as refused:
            reader(path)
        message = str(refused.value)
        assert message.startswith(f"model.backbone.pretrained weights file {path}"), message
        assert "model.backbone.pretrained=null" in message


def test_a_truncated_converted_file_gets_one_message(tmp_path):
    whole = tmp_path / "whole.pth"
    torch.save({"overrides": {}, "state_dict": {"w": torch.zeros(1000)}}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:-300])
    with pytest.raises(UserError, match=f"{cut} cannot be read"):
        read_weights(cut)


# --- ids from data: names inside their folders ----------------------------------------------------

ESCAPING_IDS = ["../escape", "a/../../b", "/etc/passwd", "a\\..\\b", "a//b", "./a", ".."]


@pytest.mark.parametrize("bad", ESCAPING_IDS)
def test_ids_that_leave_their_folder_are_refused_naming_the_list_and_line(tmp_path, bad):
    listed = tmp_path / "val.txt"
    listed.write_text(f"2007_000032\n\n{bad} extra-column\n")
    with pytest.raises(UserError, match=rf"split list {listed} line 3: id .* outside its folder"):
        read_ids(listed)


def test_sub_folder_ids_bom_and_crlf_are_read(tmp_path):
    """Cityscapes ids are `city/image`; Windows editors add a BOM and CRLF line ends."""
    listed = tmp_path / "train.txt"
    listed.write_bytes("\ufeffaachen/aachen_000000\r\n2007_000032 1\r\n".encode())
    assert read_ids(listed) == ["aachen/aachen_000000", "2007_000032"]


def test_repeated_ids_and_val_ids_in_train_are_warned_about(tmp_path, caplog):
    listed = tmp_path / "list.txt"
    listed.write_text("a\nb\na\n")
    assert read_ids(listed) == ["a", "b", "a"]
    assert f"split list {listed} repeats 1 ids (a)" in caplog.text

    data = SyntheticDataModule(str(tmp_path / "synthetic"), num_train=3, num_val=2, image_size=32)
    data.prepare_data()
    lists = tmp_path / "synthetic" / "ImageSets" / "Segmentation"
    val_id = read_ids(lists / "val.txt")[0]
    with open(lists / "train.txt", "a") as train:
        train.write(f"{val_id}\n")
    data.setup("fit")
    assert f"1 val ids of {lists / 'val.txt'} are also in the training split" in caplog.text


# --- outputs: whole or absent ---------------------------------------------------------------------

SMOKE = ["debug=smoke", "data=synthetic", "data.num_train=4", "data.num_val=2", "logger=csv",
         "val_samples=1", "trainer.max_steps=2"]  # fmt: skip


def test_checkpoints_are_renamed_into_place_never_moved_from_tmpdir(tmp_path, monkeypatch):
    """Lightning's own IO stages checkpoints in $TMPDIR (absent here: it would fail); a move
    across file systems is a copy that a kill leaves half done."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-tmpdir"))
    run = tmp_path / "run"
    train(compose("train", [*SMOKE, f"data_dir={tmp_path / 'data'}"]), run)
    saved = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in saved and not [name for name in saved if name.endswith(".tmp")]
    assert not [p for p in run.rglob("*") if p.is_file() and p.stat().st_size == 0]


def test_a_failed_checkpoint_save_keeps_the_previous_one(tmp_path):
    last = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, last)
    with pytest.raises(Exception):  # noqa: B017  (pickling a lambda fails in torch.save)
        AtomicCheckpointIO().save_checkpoint({"step": 2, "bad": lambda: 0}, last)
    assert torch.load(last, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


WRITER = """
import sys, numpy as np
from deeplab.crf.probs_io import save_probabilities
from deeplab.engine.visuals import save_mask
rng = np.random.default_rng(0)
image = rng.integers(0, 255, (400, 400, 3), dtype=np.uint8)
probs = rng.random((21, 400, 400), dtype=np.float32)
mask = rng.integers(0, 21, (400, 400), dtype=np.uint8)
print("ready", flush=True)
while True:
    save_probabilities(sys.argv[1] + "/probs/x", image, probs, mask)
    save_mask(sys.argv[1] + "/masks/x.png", mask, np.zeros((256, 3), np.uint8))
"""


@pytest.mark.parametrize("delay", [0.3, 0.7])
def test_outputs_killed_while_written_are_whole_or_absent(tmp_path, delay):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout.readline() == "ready\n"
    time.sleep(delay)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    for path in (tmp_path / "probs" / "x.npz", tmp_path / "masks" / "x.png"):
        if path.exists():  # written whole, or never renamed into place
            (load_probabilities if path.suffix == ".npz" else read_mask)(path)


# --- stops: no workers, no lock, one line ---------------------------------------------------------


def marked_processes(marker: str) -> list[int]:
    """Pids of live processes whose environment holds `marker` (workers inherit it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            alive = proc.name.isdigit() and (proc / "stat").read_text().split(") ")[1][0] != "Z"
            if alive and marker.encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


TOOLS = {
    "crf_eval": [
        "src/crf_eval.py",
        "crf.backend=pydensecrf",
        "crf.iterations=400",
        "limit=null",
        "num_workers=2",
    ],  # fmt: skip
    "search": [
        "-m",
        "deeplab.crf.search",
        "{probs}",
        "crf.backend=pydensecrf",
        "crf.iterations=400",
        "--num-workers",
        "2",
        "--no-fine",
        "--bi-w",
        "3",
        "5",
    ],  # fmt: skip
}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("tool", "sig", "status"),
    [("crf_eval", signal.SIGTERM, 143), ("search", signal.SIGINT, 130)],
)
def test_a_stopped_crf_tool_ends_its_workers_and_lock(tmp_path, tool, sig, status):
    probs = tmp_path / "probs"
    rng = np.random.default_rng(0)
    for i in range(8):
        logits = rng.random((21, 160, 160), dtype=np.float32)
        image = rng.integers(0, 255, (160, 160, 3), dtype=np.uint8)
        save_probabilities(probs / f"img{i}", image, logits / logits.sum(0), logits.argmax(0))
    marker = f"DEEPLAB_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", marker: "1"}
    args = TOOLS[tool] + ([f"probs_dir={probs}", f"hydra.run.dir={tmp_path / 'run'}"]
                          if tool == "crf_eval" else [])  # fmt: skip
    args = [a.format(probs=probs) for a in args]
    run = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(marked_processes(marker)) < 4 and run.poll() is None:  # main, server, 2 workers
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.2)
        time.sleep(0.5)
        run.send_signal(sig)
        _, err = run.communicate(timeout=60)  # returns once no process holds the pipes
    finally:
        run.kill()
    assert run.returncode == status, err
    assert err.strip().splitlines()[-1].startswith(f"Stopped by {sig.name}: the CRF"), err
    assert "Traceback" not in err, err
    assert marked_processes(marker) == []
    assert not list(tmp_path.rglob(".owner"))


# --- disks that say no ----------------------------------------------------------------------------


def test_the_run_lock_refuses_a_full_disk_and_leaves_no_empty_owner(tmp_path):
    with (
        file_size_limit(10),
        pytest.raises(UserError, match=f"run directory {tmp_path} cannot be written"),
    ):
        run_lock.acquire(tmp_path)
    assert not (tmp_path / run_lock.OWNER_FILE).exists()


def test_an_unwritable_run_directory_is_refused_naming_it(tmp_path):
    """A file where a folder should be: refused as a read-only one is (tests run as root too,
    which chmod cannot stop)."""
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="run directory .*file/run cannot be written"):
        run_lock.acquire(tmp_path / "file" / "run")


def test_output_folders_are_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    blocked = tmp_path / "file" / "out"
    with pytest.raises(UserError, match=f"output_dir={blocked} cannot be written"):
        check_writable(blocked, "output_dir")
    absent = ["data=synthetic", f"ckpt_path={tmp_path / 'absent.ckpt'}"]
    with pytest.raises(UserError, match=f"output_dir={blocked} cannot be written"):
        predict(
            compose("predict", [*absent, f"input={tmp_path}", f"output_dir={blocked}"]), tmp_path
        )
    with pytest.raises(UserError, match=f"save_probs={blocked} cannot be written"):
        evaluate(compose("evaluate", [*absent, f"save_probs={blocked}"]), tmp_path)


def test_a_full_disk_names_the_file_and_keeps_what_was_written(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    probs = rng.random((2, 8, 8), dtype=np.float32)
    with (
        file_size_limit(10),
        pytest.raises(UserError, match=f"could not write {tmp_path / 'x.npz'} .*kept"),
    ):
        save_probabilities(tmp_path / "x", image, probs, probs.argmax(0))
    assert list(tmp_path.iterdir()) == []  # no half file under any name


# --- sweeps: every job that can run, runs ---------------------------------------------------------


@pytest.mark.slow
def test_a_multirun_runs_every_job_then_lists_the_failed_ones(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        p = rng.random((3, 16, 16), dtype=np.float32)
        image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        save_probabilities(tmp_path / "probs" / f"img{i}", image, p / p.sum(0), p.argmax(0))
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        [sys.executable, "src/crf_eval.py", "-m", f"probs_dir={tmp_path / 'probs'}",
         "crf.backend=torch", "crf.bi_w=-1,5,-2", f"hydra.sweep.dir={sweep}"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert (sweep / "1" / "metrics.json").is_file()  # the job after the failed one ran
    summary = run.stderr[run.stderr.index("Error: 2 of 3 jobs failed") :]
    assert "#0 (" in summary and "crf.bi_w=-1 is invalid" in summary
    assert "#2 (" in summary and "crf.bi_w=-2 is invalid" in summary and "#1" not in summary
    assert "Traceback" not in run.stderr
    assert not list(sweep.rglob(".owner"))


# --- memory: sizes checked before decoding --------------------------------------------------------


def bomb(path) -> None:
    """A PNG of 11000 x 11000 pixels in a few kB: 363 MB once decoded to RGB (PIL warns past 89 MP
    and refuses past 179 MP only)."""
    Image.new("1", (11000, 11000)).save(path)


def test_an_image_above_the_pixel_limit_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    bomb(path)
    with pytest.warns(Image.DecompressionBombWarning):  # PIL's own warning, from the header
        with pytest.raises(UserError, match=rf"image {path} is 11000 x 11000 pixels .*max_pixels"):
            read_rgb(path)
        with pytest.raises(UserError, match="more than the limit of 0.0001 MP"):
            read_mask(path, max_pixels=100)


def test_a_predict_folder_goes_on_past_large_and_foreign_files_and_lists_them(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / "a.gif")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / "b.webp")
    Image.fromarray(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8)).save(images / "big.png")
    (images / "notes.txt").write_text("not an image")
    ckpt = untrained_checkpoint(tmp_path / "net.ckpt")
    cfg = compose("predict", [*MODEL, f"ckpt_path={ckpt}", f"input={images}",
                              "data.max_pixels=1000"])  # fmt: skip
    with pytest.raises(SkippedImages) as skipped:
        predict(cfg, tmp_path / "out")
    assert skipped.value.skipped == [images / "notes.txt", images / "big.png"]
    message = str(skipped.value)
    assert "big.png is 60 x 60 pixels" in message and "notes.txt is not read" in message
    assert sorted(p.name for p in (tmp_path / "out" / "masks").iterdir()) == ["a.png", "b.png"]


# --- messages -------------------------------------------------------------------------------------


def test_a_directory_given_as_a_file_is_called_one(tmp_path):
    with pytest.raises(UserError, match=f"checkpoint {tmp_path} is a directory, not a file"):
        read_checkpoint(tmp_path)


@pytest.mark.parametrize("dims", [(-1, -4), (2**32, 2**32), (-2, 2)], ids=str)
def test_a_forged_caffe_blob_shape_is_refused(dims):
    blob = BlobProto()
    blob.shape.dim.extend(dims)
    blob.data.extend([0.0] * (4 if dims[0] < 0 else 0))
    with pytest.raises(UserError, match=r"conv1: blob of shape .* corrupt"):
        blob_array(blob, "conv1")


def test_an_override_hydra_cannot_lex_gets_one_message(capsys):
    check_command_line(["-m", "--config-name", "train", "--cfg", "job", "a=1", "+experiment=x",
                        "crf.name='héllo'"])  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        check_command_line(["data.batch_size=4", "crf.name=héllo"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: the override 'crf.name=héllo' cannot be read") and "quote" in err
    assert err.count("\n") == 1


@pytest.mark.slow
def test_train_py_refuses_a_misspelt_added_key_and_an_unlexable_value(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    common = [sys.executable, "src/train.py", "data=synthetic", f"hydra.run.dir={tmp_path}"]
    for extra, expected in (
        (["+data.bach_size=4"], "did you mean data.batch_size? Pass data.batch_size=4"),
        (["data.root=dätä"], "the override 'data.root=dätä' cannot be read"),
    ):
        run = subprocess.run([*common, *extra], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=300)  # fmt: skip
        assert run.returncode == 2, run.stderr
        assert expected in run.stderr and "Traceback" not in run.stderr, run.stderr


# --- a handed file's record is data: an allowlist, never code or paths ---------------------------

FORBIDDEN_OVERRIDES = [
    "++model._target_=shutil.copy",
    "++model._args_=[a,b]",
    "+hydra.callbacks.x._target_=shutil.copy",
    "hydra.run.dir=/tmp/elsewhere",
    "++output_dir=/tmp/elsewhere",
    "++save_probs=/tmp/elsewhere",
    "++data.root=${oc.env:HOME}",
    "++data._target_=shutil.copy",
    "++model.backbone.pretrained=/etc/passwd",
    "++model.rates={_target_:shutil.copy}",
    "model@hydra.run=largefov",
    "~model.rates",
    "data=../../evil",
    "++model.rates=choice(6,12)",
]


def recorded_checkpoint(path: Path, record: dict, nan: bool = False) -> Path:
    """The MODEL network's untrained weights (predict's config) with `record` as its `deeplab`
    record; `nan`: one weight NaN."""
    untrained_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    if nan:
        next(iter(checkpoint["state_dict"].values())).view(-1)[0] = float("nan")
    torch.save({**checkpoint, "deeplab": record}, path)
    return path


@pytest.mark.parametrize("bad", FORBIDDEN_OVERRIDES)
def test_stored_overrides_outside_the_allowlist_are_refused_naming_file_and_key(tmp_path, bad):
    ckpt = recorded_checkpoint(tmp_path / "x.ckpt", {"overrides": ["data=synthetic", bad]})
    with pytest.raises(UserError) as refused:
        with_checkpoint_overrides(["evaluate.py", f"ckpt_path={ckpt}"])
    message = str(refused.value)
    assert str(ckpt) in message and "\n" not in message
    key = bad.lstrip("+~").split("=")[0].split("@")[0]
    assert key in message or bad in message, message


def test_allowed_overrides_pass_as_they_were_recorded(tmp_path):
    saved = ["data=synthetic", "model=largefov", "crf=synthetic", "++data.limit_val=3",
             "++model.rates=[12]", "++crf.bi_xy_std=12.0", "tta.pad_to=513",
             "++data.root='/data/x y'", "crf_rnn=on", "++crf_rnn.test_iterations=10"]  # fmt: skip
    ckpt = recorded_checkpoint(tmp_path / "x.ckpt", {"overrides": saved})
    argv = with_checkpoint_overrides(["evaluate.py", f"ckpt_path={ckpt}"])
    assert argv[1:-1] == saved


def test_evaluate_never_calls_code_a_checkpoint_names(tmp_path):
    """`++model._target_=shutil.copy` once copied a file to a path the checkpoint chose."""
    source, copied = tmp_path / "secret.txt", tmp_path / "copied.txt"
    source.write_text("secret")
    evil = ["++model._target_=shutil.copy", f"++model._args_=['{source}','{copied}']"]
    ckpt = recorded_checkpoint(tmp_path / "x.ckpt", {"overrides": ["data=synthetic", *evil]})
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "src/evaluate.py"),
            f"ckpt_path={ckpt}",
            f"hydra.run.dir={tmp_path / 'eval'}",
        ],  # fmt: skip
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert str(ckpt) in done.stderr and "model._target_" in done.stderr
    assert not copied.exists()


def model_record(**changes) -> dict:
    cfg = compose("predict", [*MODEL, "ckpt_path=x", "input=x"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    for key, value in changes.items():
        node = model
        *parents, leaf = key.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return model


@pytest.mark.parametrize(
    "changes",
    [
        {"_target_": "shutil.copy"},
        {"backbone._target_": "shutil.copy"},
        {"backbone._args_": ["a", "b"]},
        {"rates": "${oc.env:HOME}"},
        {"hydra": {"run": {"dir": "/tmp/x"}}},
    ],
    ids=str,
)
def test_export_builds_only_the_projects_networks(tmp_path, changes):
    marker = tmp_path / "called"
    changes = {k: [str(tmp_path / "x"), str(marker)] if k.endswith("_args_") else v
               for k, v in changes.items()}  # fmt: skip
    record = {"network": "DeepLab", "num_classes": 7, "model": model_record(**changes),
              "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}}  # fmt: skip
    ckpt = recorded_checkpoint(tmp_path / "x.ckpt", record)
    with pytest.raises(UserError, match=f"{ckpt} records 'model"):
        export(ckpt, tmp_path / "out.pt")
    assert not marker.exists() and not (tmp_path / "out.pt").exists()


def test_resume_and_init_from_checkpoint_read_the_record_as_data(tmp_path):
    ckpt = recorded_checkpoint(tmp_path / "x.ckpt", {"overrides": ["hydra.run.dir=/tmp/x"]})
    with pytest.raises(UserError, match=f"{ckpt} records 'hydra.run.dir'"):
        check_readable(ckpt)  # train.py's resume
    cfg = compose("predict", [*MODEL, f"ckpt_path={ckpt}", "input=x"])
    datamodule = instantiate(cfg.data)
    net = build_network(cfg, datamodule)
    with pytest.raises(UserError, match=f"{ckpt} records 'hydra.run.dir'"):
        load_weights(net, ckpt, "init_from_checkpoint", cfg, datamodule)


# --- non-finite weights in any handed file --------------------------------------------------------


def test_non_finite_weights_are_refused_by_name(tmp_path):
    record = {"network": "DeepLab", "num_classes": 7, "model": model_record(),
              "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}}  # fmt: skip
    ckpt = recorded_checkpoint(tmp_path / "nan.ckpt", record, nan=True)
    first = next(iter(torch.load(ckpt, weights_only=True)["state_dict"]))
    cfg = compose("predict", [*MODEL, f"ckpt_path={ckpt}", "input=x", "data.mean=[0,0,0]",
                              "data.std=[1,1,1]"])  # fmt: skip
    datamodule = instantiate(cfg.data)
    net = build_network(cfg, datamodule)
    for refuse in (
        lambda: load_weights(net, ckpt, "ckpt_path", cfg, datamodule),  # evaluate, predict
        lambda: check_readable(ckpt),  # resume
        lambda: export(ckpt, tmp_path / "out.pt"),
    ):
        with pytest.raises(UserError, match=rf"{ckpt} holds non-finite .* in {first[4:]}"):
            refuse()
    weights = tmp_path / "vgg16.pth"
    torch.save({"features.0.weight": torch.tensor([1.0, float("inf")])}, weights)
    with pytest.raises(UserError, match=f"{weights} holds non-finite .* features.0.weight"):
        read_weights(weights)


# --- no tool writes over another run's or another process's file ----------------------------------


def test_two_writers_of_one_file_never_share_a_temporary_name(tmp_path):
    """Three predicts into one output_dir once collided on `.x.png.tmp`: one died."""
    dst = tmp_path / "x.txt"
    with written_atomically(dst) as first:
        first.write_text("first")
        with written_atomically(dst) as second:
            assert second != first
            second.write_text("second")
        assert dst.read_text() == "second"
    assert dst.read_text() == "first" and sorted(tmp_path.iterdir()) == [dst]
    assert dst.stat().st_mode & 0o777 == 0o666 & ~run_atomic.UMASK


def test_evaluate_refuses_the_run_directory_of_a_training(tmp_path):
    run = tmp_path / "train-run"
    run.mkdir()
    (run / "metrics.json").write_text('{"val/mIoU": 81.4}')
    ckpt = untrained_checkpoint(tmp_path / "x.ckpt")
    cfg = compose("evaluate", [*MODEL, f"ckpt_path={ckpt}"])
    with pytest.raises(UserError, match=f"hydra.run.dir={run} holds the results of another run"):
        evaluate(cfg, run)
    assert (run / "metrics.json").read_text() == '{"val/mIoU": 81.4}'


def test_export_to_a_directory_is_one_message(tmp_path, capsys):
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(SystemExit) as stopped:
        export_main([str(tmp_path / "x.ckpt"), str(tmp_path / "model.onnx")])
    assert stopped.value.code == 2
    assert f"{tmp_path / 'model.onnx'} is a directory" in capsys.readouterr().err


# --- a run's record is the truth: today's files are compared with it ------------------------------


def test_a_reordered_class_list_is_refused():
    record = {"classes": {"names": ["background", "cat", "dog"], "colours": [[0, 0, 0],
              [128, 0, 0], [0, 128, 0]]}}  # fmt: skip
    palette = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]])
    check_class_list(record, ["background", "cat", "dog"], palette, "x.ckpt")
    with pytest.raises(UserError, match="class 1 is 'cat' in the checkpoint, 'dog' now"):
        check_class_list(record, ["background", "dog", "cat"], palette, "x.ckpt")
    with pytest.raises(UserError, match="other class colours"):
        check_class_list(record, ["background", "cat", "dog"], palette[::-1], "x.ckpt")


def test_crf_on_a_trained_crf_rnn_must_not_replace_its_kernels():
    recorded = ["crf=synthetic", "++crf.pos_xy_std=1.0", "++crf.bi_xy_std=12.0"]
    check_crf_kernels(recorded, {"pos_xy_std": 1.0, "bi_xy_std": 12.0, "iterations": 10}, "x")
    with pytest.raises(UserError, match=r"crf.bi_xy_std 12.0 \(this run: 80.0\)"):
        check_crf_kernels(recorded, {"pos_xy_std": 1.0, "bi_xy_std": 80.0}, "x")


def test_predict_takes_the_classes_from_the_checkpoint_without_the_data_root(tmp_path):
    """A data=folder checkpoint predicted on a machine without the training folder."""
    record = {"network": "DeepLab", "num_classes": 7,
              "classes": {"names": [f"c{i}" for i in range(7)],
                          "colours": [[i, 2 * i, 3 * i] for i in range(7)]},
              "normalization": {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0]},
              "overrides": ["data=folder", f"++data.root='{tmp_path / 'gone'}'",
                            "++data.mean=[1.0,2.0,3.0]", "++data.std=[1.0,1.0,1.0]",
                            "++model.width_mult=0.0625"]}  # fmt: skip
    ckpt = recorded_checkpoint(tmp_path / "x.ckpt", record)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(image)
    argv = with_checkpoint_overrides(["predict.py", f"ckpt_path={ckpt}", f"input={image}"])
    [mask] = predict(compose("predict", argv[1:]), tmp_path / "out")
    palette = np.asarray(Image.open(mask).getpalette()).reshape(-1, 3)
    assert palette[:7].tolist() == record["classes"]["colours"]  # the recorded colours
    changed = [*argv[1:], "data.mean=[9.0,9.0,9.0]"]  # a difference is named, not followed
    with pytest.raises(UserError, match=r"trained on inputs normalized with mean \[1.0, 2.0"):
        predict(compose("predict", changed), tmp_path / "out2")
    voc = [*argv[1:], "data=voc"]  # another data set: its class count is named
    with pytest.raises(UserError, match=r"trained for 7 classes, but this run's data set has 21"):
        predict(compose("predict", voc), tmp_path / "out3")


def test_a_class_count_from_a_file_is_not_called_a_default_the_user_left():
    with pytest.raises(UserError) as refused:
        instantiate(compose("evaluate", ["ckpt_path=x", "data.num_classes=5"]).data)
    message = str(refused.value)
    assert "came from the command line or from the checkpoint" in message
    assert "default" not in message
