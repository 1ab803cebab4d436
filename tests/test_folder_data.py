"""data=folder: images/, masks/ and classes.txt in one folder, read as people's tools write them."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplab.data.classes import VOC_CLASSES, voc_palette
from deeplab.data.dataset import read_mask
from deeplab.data.folder import FolderDataModule
from deeplab.export import export
from deeplab.runtime.config import compose, instantiate
from deeplab.runtime.config_checks import check_config
from deeplab.runtime.errors import MissingFileError, UserError
from deeplab.weights.checkpoint_overrides import recorded_split_dir, with_run_split_dir

REPO = Path(__file__).resolve().parents[1]
COLOURS = {"background": (0, 0, 0), "cat": (200, 40, 40), "dog": (40, 200, 40)}
CLASSES_TXT = "background 0 0 0\ncat 200 40 40\ndog 40 200 40\nignore 255 255 255\n"


def make_folder(root: Path, count: int = 6, colour_masks: bool = False, size=(24, 32)) -> Path:
    """`count` random images with a cat square and a dog bar on background and a void border."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text(CLASSES_TXT)
    h, w = size
    for i in range(count):
        mask = np.zeros(size, np.uint8)
        mask[4:12, 4 + i : 12 + i] = 1
        mask[16:20, :] = 2
        mask[0, :] = 255
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"img{i}.{('jpg', 'png', 'bmp')[i % 3]}")
        if colour_masks:
            table = np.zeros((256, 3), np.uint8)
            table[[0, 1, 2, 255]] = [*COLOURS.values(), (255, 255, 255)]
            Image.fromarray(table[mask]).save(root / "masks" / f"img{i}.png")
        else:
            Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")
    return root


def truth(i: int) -> np.ndarray:
    mask = np.zeros((24, 32), np.uint8)
    mask[4:12, 4 + i : 12 + i] = 1
    mask[16:20, :] = 2
    mask[0, :] = 255
    return mask


def module(root: Path, **kwargs) -> FolderDataModule:
    return FolderDataModule(str(root), num_workers=0, persistent_workers=False, **kwargs)


def val_masks(dm: FolderDataModule) -> dict[str, np.ndarray]:
    dm.setup("validate")
    return {dm.val_set.ids[i]: dm.val_set.load(i)[1] for i in range(len(dm.val_set))}


def test_classes_and_count_come_from_classes_txt(tmp_path):
    root = make_folder(tmp_path / "pets")
    cfg = compose("train", ["data=folder", f"data.root={root}", "model=aspp_l"])
    check_config(cfg)
    assert cfg.data.num_classes == 3 and cfg.model.num_classes == 3
    dm = module(root)
    assert dm.class_names == ["background", "cat", "dog"] and dm.num_classes == 3
    assert dm.palette[1].tolist() == [200, 40, 40] and dm.palette[255].tolist() == [255] * 3


def test_the_pixel_limit_applies_to_own_data_sets(tmp_path):
    """`data.max_pixels` protects memory for every data set: a 64-pixel image is refused by name
    under `data=folder data.max_pixels=10`, before it is decoded."""
    root = make_folder(tmp_path / "pets", count=2, size=(8, 8))
    cfg = compose("train", ["data=folder", f"data.root={root}", "data.max_pixels=10"])
    cfg.data.split_dir = str(tmp_path / "splits")
    datamodule = instantiate(cfg.data)
    datamodule.setup("validate")
    name = datamodule.val_set.ids[0]
    with pytest.raises(UserError, match=rf"image .*{name}\.\w+ is 8 x 8 pixels.*data\.max_pixels"):
        datamodule.val_set.load(0)


@pytest.mark.parametrize("colour_masks", [False, True])
def test_index_and_colour_masks_read_as_class_indices(tmp_path, colour_masks):
    root = make_folder(tmp_path / "pets", colour_masks=colour_masks)
    dm = module(root, split_dir=str(tmp_path / "splits"))
    for name, mask in val_masks(dm).items():
        assert np.array_equal(mask, truth(int(name[3:])))


def test_ignore_index_of_the_files_becomes_void(tmp_path):
    root = make_folder(tmp_path / "pets")
    for path in (root / "masks").iterdir():
        mask = np.array(Image.open(path))
        Image.fromarray(np.where(mask == 255, 9, mask).astype(np.uint8)).save(path)
    dm = module(root, ignore_index=9)
    for name, mask in val_masks(dm).items():
        assert np.array_equal(mask, truth(int(name[3:])))
    with pytest.raises(UserError, match=r"holds values 9, neither a class \(0..2"):
        val_masks(module(root))  # default 255: 9 is no class
    with pytest.raises(UserError, match="data.ignore_index=1 is the index of class 'cat'"):
        module(root, ignore_index=1)


def test_seeded_split_is_written_and_reused(tmp_path):
    root = make_folder(tmp_path / "pets", count=10)
    splits = tmp_path / "run" / "splits"
    dm = module(root, val_fraction=0.3, seed=1, split_dir=str(splits))
    dm.setup("fit")
    train, val = dm.train_set.ids, dm.val_set.ids
    assert len(val) == 3 and sorted(train + val) == [f"img{i}" for i in range(10)]
    assert (splits / "val.txt").read_text().split() == val
    (splits / "val.txt").write_text("img0\nimg1\n")  # an evaluation reads the run's lists
    again = module(root, seed=7, split_dir=str(splits))
    again.setup("validate")
    assert again.val_set.ids == ["img0", "img1"]
    other_seed = module(root, val_fraction=0.3, seed=2)
    other_seed.setup("validate")
    assert other_seed.val_set.ids != val


def test_split_lists_with_bom_and_crlf(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "val.txt").write_bytes("\ufeffimg1\r\nimg4\r\n\r\n".encode())
    (root / "classes.txt").write_bytes(("\ufeff" + CLASSES_TXT.replace("\n", "\r\n")).encode())
    dm = module(root)
    dm.setup("fit")
    assert dm.val_set.ids == ["img1", "img4"]
    assert dm.train_set.ids == ["img0", "img2", "img3", "img5"]  # the others
    assert dm.class_names == ["background", "cat", "dog"]


def test_images_in_any_mode_and_exif_orientation(tmp_path):
    root = make_folder(tmp_path / "pets", count=4)
    for path in (root / "images").iterdir():
        path.unlink()
    Image.new("L", (32, 24), 90).save(root / "images" / "img0.jpg")  # grey
    Image.new("RGBA", (32, 24), (9, 9, 9, 0)).save(root / "images" / "img1.png")  # alpha
    Image.new("P", (32, 24), 3).save(root / "images" / "img2.png")  # palette
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 24 x 32 sideways, shown 32 x 24 as the mask
    Image.new("RGB", (24, 32), (1, 2, 3)).save(root / "images" / "img3.jpg", exif=exif.tobytes())
    dm = module(root, val_fraction=0.5)
    dm.setup("fit")
    for dataset in (dm.train_set, dm.val_set):
        for i in range(len(dataset)):
            image, mask = dataset.load(i)
            assert image.shape == (24, 32, 3) and image.dtype == np.uint8


def bad(tmp_path, edit, match, error=UserError, **kwargs):
    root = make_folder(tmp_path / "pets", colour_masks=kwargs.pop("colour_masks", False))
    edit(root)
    with pytest.raises(error, match=match):
        val_masks(module(root, val_fraction=0.5, **kwargs))


def test_bad_folders_get_one_message_naming_the_file_and_the_fix(tmp_path):
    def value_7(root):
        Image.fromarray(np.full((24, 32), 7, np.uint8)).save(root / "masks" / "img0.png")
        (root / "val.txt").write_text("img0\n")

    bad(tmp_path / "a", value_7, r"mask .*img0.png holds values 7, neither a class")

    def stray_colour(root):
        mask = np.zeros((24, 32, 3), np.uint8)
        mask[5, 7] = (1, 2, 3)
        Image.fromarray(mask).save(root / "masks" / "img0.png")
        (root / "val.txt").write_text("img0\n")

    bad(tmp_path / "b", stray_colour, r"img0.png has colour \(1, 2, 3\) at x=7, y=5 \(1 pixels")

    def no_mask(root):
        (root / "masks" / "img2.png").unlink()
        (root / "masks" / "img4.png").unlink()

    bad(tmp_path / "c", no_mask, r"images without a mask in .*masks: img2, img4; add")

    def no_image(root):
        (root / "images" / "img1.png").unlink()

    bad(tmp_path / "d", no_image, r"masks without an image in .*images: img1;")

    def smaller_mask(root):
        Image.fromarray(np.zeros((20, 32), np.uint8)).save(root / "masks" / "img0.png")
        (root / "val.txt").write_text("img0\n")

    bad(tmp_path / "e", smaller_mask, r"img0.jpg is 32x24 but mask .*img0.png is 32x20")

    def two_images(root):
        shutil.copy(root / "images" / "img0.jpg", root / "images" / "img0.JPEG")

    bad(tmp_path / "f", two_images, r"two images with one id: img0.JPEG / img0.jpg")

    def rgb_without_colours(root):
        (root / "classes.txt").write_text("background\ncat\ndog\n")

    rgb_message = r"RGB image: .*give each class its colour"
    bad(tmp_path / "g", rgb_without_colours, rgb_message, colour_masks=True)

    def unknown_id(root):
        (root / "train.txt").write_text("img0\nimg9\n")

    bad(tmp_path / "h", unknown_id, r"train.txt names ids with no image in .*: img9")

    for text, match in (
        (None, r"classes.txt is missing: write one class name per line"),
        ("\n# nothing\n", r"classes.txt lists no class"),
        ("a\nb\na\n", r"line 3: class 'a' is listed twice"),
        ("a 1 2 3\nb 1 2 3\n", r"two lines share a colour"),
        ("a\nignore\n", r"line 2: give the void colour"),
    ):
        root = tmp_path / f"classes{len(text or '')}"
        make_folder(root)
        (root / "classes.txt").unlink()
        if text is not None:
            (root / "classes.txt").write_text(text)
        with pytest.raises(UserError, match=match):
            module(root)
        with pytest.raises(UserError, match=match):  # what train.py reports, via the resolver
            check_config(compose("train", ["data=folder", f"data.root={root}"]))
    with pytest.raises(MissingFileError, match=r"images is missing: data=folder reads"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "classes.txt").write_text("a\nb\n")
        module(tmp_path / "empty").setup("fit")
    with pytest.raises(UserError, match=r"data.root must be set: pass data.root=<your folder"):
        check_config(compose("train", ["data=folder"]))


@pytest.fixture
def voc_folder(tmp_path, voc_sample_root) -> Path:
    """The real VOC sample as a folder: JPEGs, palette masks, VOC names with their colours."""
    voc = voc_sample_root / "VOC2012"
    root = tmp_path / "voc_folder"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    ids = sorted(p.stem for p in (voc / "SegmentationClass").glob("*.png"))[:12]
    for name in ids:
        shutil.copy(voc / "JPEGImages" / f"{name}.jpg", root / "images")
        shutil.copy(voc / "SegmentationClass" / f"{name}.png", root / "masks")
    lines = [f"{n} {' '.join(map(str, voc_palette()[i]))}" for i, n in enumerate(VOC_CLASSES)]
    (root / "classes.txt").write_text("\n".join([*lines, "ignore 224 224 192"]) + "\n")
    return root


def test_real_voc_files_read_as_the_voc_reader_reads_them(voc_folder, tmp_path):
    dm = module(voc_folder, val_fraction=0.5)
    assert dm.num_classes == 21
    masks = val_masks(dm)
    for name, mask in masks.items():
        assert np.array_equal(mask, read_mask(voc_folder / "masks" / f"{name}.png"))
    # The same masks saved as RGB colour images (what many tools export) read the same.
    palette = voc_palette()
    for name in masks:
        rgb = palette[read_mask(voc_folder / "masks" / f"{name}.png")]
        Image.fromarray(rgb).save(voc_folder / "masks" / f"{name}.png")
    for name, mask in val_masks(module(voc_folder, val_fraction=0.5)).items():
        assert np.array_equal(mask, masks[name])


@pytest.mark.slow
def test_train_py_smoke_run_then_export(tmp_path):
    """`python src/train.py data=folder data.root=DIR debug=smoke` trains, writes its split and a
    checkpoint whose export carries the folder's class names and colours."""
    root = make_folder(tmp_path / "pets", count=8, size=(24, 32))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "disabled"}
    env.pop("HYDRA_FULL_ERROR", None)
    args = ["data=folder", f"data.root={root}", "debug=smoke", "logger=csv"]
    args += ["data.val_fraction=0.25", f"hydra.run.dir={run}"]
    cmd = [sys.executable, str(REPO / "src" / "train.py"), *args]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["val/IoU"]) == ["background", "cat", "dog"]
    assert len((run / "splits" / "val.txt").read_text().split()) == 2
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["deeplab"]["classes"]["names"] == ["background", "cat", "dog"]
    assert ckpt["deeplab"]["classes"]["colours"][1] == [200, 40, 40]

    # evaluate.py needs the checkpoint alone: data root, classes and the written split travel
    evaluate = [sys.executable, str(REPO / "src" / "evaluate.py")]
    evaluate += [
        f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'e'}",
    ]
    done = subprocess.run(evaluate, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    scored = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert scored["val/mIoU"] == metrics["val/mIoU"] and list(scored["val/IoU"]) == [
        "background",
        "cat",
        "dog",
    ]

    props = export(run / "checkpoints" / "last.ckpt", tmp_path / "pets.onnx")
    assert json.loads(props["class_names"]) == ["background", "cat", "dog"]

    # The run moves and images are added: its recorded split is read back, nothing is redrawn
    # or written into the data folder, and the scores are the same.
    moved = tmp_path / "moved"
    run.rename(moved)
    for i in range(3):
        shutil.copy(root / "images" / "img0.jpg", root / "images" / f"new{i}.jpg")
        shutil.copy(root / "masks" / "img0.png", root / "masks" / f"new{i}.png")
    before = sorted(p.name for p in root.rglob("*"))
    evaluate[-2:] = [
        f"ckpt_path={moved / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'm'}",
    ]
    done = subprocess.run(evaluate, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (
        json.loads((tmp_path / "m" / "metrics.json").read_text())["val/mIoU"] == metrics["val/mIoU"]
    )
    assert sorted(p.name for p in root.rglob("*")) == before and not run.exists()
    # classes.txt reordered after training: named, never followed
    (root / "classes.txt").write_text("background 0 0 0\ndog 40 200 40\ncat 200 40 40\n")
    evaluate[-1] = f"hydra.run.dir={tmp_path / 'r'}"
    done = subprocess.run(evaluate, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and "class 1 is 'cat' in the checkpoint, 'dog' now" in done.stderr


def test_fine_tuning_converted_voc_weights_reinitialises_the_classifier(tmp_path, caplog):
    """init=caffe with a 21-class VOC network on a 3-class folder: all but the classifier load,
    and the run says which tensors start afresh."""
    import hydra

    from deeplab.weights.caffe.converter import convert, save
    from deeplab.weights.caffe.released_layouts import vgg16_layers, write_caffemodel

    layers = vgg16_layers(0.0625, num_classes=21, head="largefov")
    converted = convert(write_caffemodel(tmp_path / "voc.caffemodel", layers))
    save(converted, tmp_path / "voc.pth")
    root = make_folder(tmp_path / "pets")
    init = ["init=caffe", f"init.path={tmp_path / 'voc.pth'}", "model.width_mult=0.0625"]
    cfg = compose("train", ["data=folder", f"data.root={root}", *init])
    with caplog.at_level("WARNING"):
        net = hydra.utils.instantiate(cfg.model)
    assert net.head.branches[0].fc8.out_channels == 3
    assert "re-initialised, not loaded: head.branches.0.fc8.weight (21, " in caplog.text
    fc7 = converted["state_dict"]["head.branches.0.fc7.weight"]
    torch.testing.assert_close(net.head.branches[0].fc7.weight.data, fc7)


# --- own data read exactly, or refused by name (docs/faults.md) -----------------------------------


def one_line_error(root: Path) -> str:
    """What train.py reports for `root` (through the class-count resolver): one line."""
    with pytest.raises(UserError) as refused:
        check_config(compose("train", ["data=folder", f"data.root={root}"]))
    message = str(refused.value)
    assert "\n" not in message and "full_key" not in message, message
    return message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (b"a\n# comment\n\nb\na\n", r"classes.txt line 5: class 'a' is listed twice"),
        (b"background\ncat \xe9\n", r"classes.txt is not UTF-8 text \(byte 15\): save it as UTF-8"),
        (b"cat 1.5 2 3\ndog\n", r"line 1: colour 1.5 2 3 must be three 0-255 integers"),
        (b"cat 300 0 0\ndog\n", r"line 1: colour 300 0 0 must be three 0-255 integers"),
        (b"0 0 0\ndog\n", r"line 1: the colour has no class name"),
        (b"# one class\nthing\n", r"lists one class \('thing'\): segmentation needs two"),
        (
            "".join(f"c{i} {i % 256} {i // 256} 9\n" for i in range(300)).encode(),
            r"lists 300 classes; masks here hold at most 255",
        ),
    ],
    ids=["line-numbers", "latin-1", "float-colour", "colour-300", "no-name", "one-class", "300"],
)
def test_a_bad_classes_txt_is_one_line_with_its_true_line_number(tmp_path, text, match):
    root = make_folder(tmp_path / "pets")
    (root / "classes.txt").write_bytes(text)
    assert re.search(match, one_line_error(root))
    with pytest.raises(UserError, match=match):
        module(root)


def test_a_directory_named_like_a_file_is_called_a_directory(tmp_path):
    root = make_folder(tmp_path / "pets")
    (root / "classes.txt").unlink()
    (root / "classes.txt").mkdir()
    assert "classes.txt is a directory" in one_line_error(root)
    root = make_folder(tmp_path / "cats")
    (root / "images" / "zz.jpg").mkdir()
    with pytest.raises(UserError, match=r"images/zz.jpg is a directory, not one of the images"):
        val_masks(module(root))


def test_ids_differing_only_by_case_or_whitespace_are_refused_by_name(tmp_path):
    root = make_folder(tmp_path / "a")
    shutil.copy(root / "masks" / "img0.png", root / "masks" / "img0.PNG")
    with pytest.raises(UserError, match=r"two masks with one id: img0.PNG / img0.png"):
        val_masks(module(root))
    root = make_folder(tmp_path / "b")
    shutil.copy(root / "images" / "img0.jpg", root / "images" / "IMG0.jpg")
    with pytest.raises(UserError, match=r"two images with one id: IMG0.jpg / img0.jpg"):
        val_masks(module(root))
    root = make_folder(tmp_path / "c")
    (root / "images" / "img0.jpg").rename(root / "images" / "img0 .jpg")
    (root / "masks" / "img0.png").rename(root / "masks" / "img0 .png")
    with pytest.raises(UserError, match=r"names begin or end with whitespace: 'img0 .jpg'"):
        val_masks(module(root))


def test_split_lists_read_ids_exactly_as_written(tmp_path):
    """An id beginning with `#` is an id: taken as a comment, its val image was trained on."""
    root = make_folder(tmp_path / "pets")
    (root / "images" / "img0.jpg").rename(root / "images" / "#0.jpg")
    (root / "masks" / "img0.png").rename(root / "masks" / "#0.png")
    (root / "val.txt").write_text("#0\nimg1\n")
    dm = module(root)
    assert dm.split_ids("val") == ["#0", "img1"] and "#0" not in dm.split_ids("train")


def test_masks_with_class_values_beyond_8_bits_are_never_wrapped(tmp_path):
    """A 16-bit mask value 263 was once read as class 7 (263 mod 256)."""
    root = make_folder(tmp_path / "pets")
    wide = np.zeros((24, 32), np.uint16)
    wide[3, 3] = 263
    Image.fromarray(wide).save(root / "masks" / "img0.png")
    assert Image.open(root / "masks" / "img0.png").mode.startswith("I")
    (root / "val.txt").write_text("img0\n")
    with pytest.raises(UserError, match=r"img0.png holds values 263, neither a class"):
        val_masks(module(root))


def test_a_trained_networks_split_is_read_back_never_drawn_again(tmp_path):
    root = make_folder(tmp_path / "pets")
    run = tmp_path / "run"
    with pytest.raises(MissingFileError, match=r"the split this network was trained on is not"):
        module(root, split_dir=str(run / "splits"), draw_split=False).split_ids("val")
    assert not (run / "splits").exists() and not (root / "val.txt").exists()
    module(root, val_fraction=0.5, split_dir=str(run / "splits")).split_ids("val")
    drawn = (run / "splits" / "val.txt").read_text()
    # the run moves, images are added: the recorded (relative) split still reads back exactly
    assert recorded_split_dir(str(run / "splits"), run) == "splits"
    moved = tmp_path / "moved"
    run.rename(moved)
    for i in (6, 7, 8):
        shutil.copy(root / "images" / "img0.jpg", root / "images" / f"new{i}.jpg")
        shutil.copy(root / "masks" / "img0.png", root / "masks" / f"new{i}.png")
    (moved / "checkpoints").mkdir()
    overrides = with_run_split_dir(["++data.split_dir='splits'"], moved / "checkpoints" / "x")
    assert overrides == [f"++data.split_dir='{moved / 'splits'}'"]
    dm = module(root, split_dir=str(moved / "splits"), draw_split=False)
    assert "".join(f"{i}\n" for i in dm.split_ids("val")) == drawn
