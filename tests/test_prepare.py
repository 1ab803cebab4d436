"""`deeplab.data.prepare` end to end: download from a local HTTP server, verify, extract, convert,
then read the result with the matching datamodule. Archives are tiny copies of official layouts."""

import contextlib
import functools
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import file_size_limit
from PIL import Image
from scipy.io import savemat

from deeplab.data.datamodule import (
    CityscapesDataModule,
    ContextDataModule,
    PersonPartDataModule,
    VOCDataModule,
)
from deeplab.data.dataset import read_ids, read_mask, write_mask
from deeplab.data.prepare.__main__ import main
from deeplab.data.prepare.annotations import convert_all, sbd_mask
from deeplab.data.prepare.datasets import (
    prepare_cityscapes,
    prepare_context,
    prepare_person_part,
    prepare_sbd,
)
from deeplab.data.prepare.fetch import Archive, download, md5sum
from deeplab.runtime.errors import UserError

H, W = 12, 16


def jpeg(seed: int) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def mat(content: dict) -> bytes:
    buf = io.BytesIO()
    savemat(buf, content)
    return buf.getvalue()


def tar(path: Path, files: dict[str, bytes]) -> Path:
    mode = "w:gz" if path.name.endswith("gz") else "w"
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def lines(ids) -> bytes:
    return "".join(f"{i}\n" for i in ids).encode()


@contextlib.contextmanager
def serving(www: Path, handler):
    """Serve the folder `www` on 127.0.0.1 with `handler`; yields the base URL."""
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(www))
    )
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    with serving(www, Quiet) as url:
        yield www, url


def served(server, name: str, path: Path) -> Archive:
    """An Archive entry for a file placed in the server's folder, with its true md5."""
    return Archive(f"{server[1]}/{path.name}", md5sum(path))


# --- VOC 2012 + SBD ---------------------------------------------------------------------------

VOC_TRAIN, VOC_VAL, SBD_TRAIN, SBD_VAL = ["a1", "a2"], ["v1"], ["a1", "s1", "v1"], ["s2"]


def voc_seg(i: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[2:8, 3:9] = i + 1
    mask[1, :] = 255  # VOC's boundary band
    return mask


def sbd_seg(i: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[4:10, 5:12] = 10 + i
    return mask


def sbd_mat(mask: np.ndarray) -> bytes:
    """SBD's `cls/<id>.mat` layout."""
    return mat({"GTcls": {"Segmentation": mask, "Boundaries": np.zeros(1), "CategoriesPresent": 1}})


@pytest.fixture
def voc_archives(server) -> dict:
    www, _ = server
    names = VOC_TRAIN + VOC_VAL + ["s1", "s2"]
    files = {f"VOCdevkit/VOC2012/JPEGImages/{n}.jpg": jpeg(i) for i, n in enumerate(names)}
    for i, n in enumerate(VOC_TRAIN + VOC_VAL):
        files[f"VOCdevkit/VOC2012/SegmentationClass/{n}.png"] = png(voc_seg(i))
    files["VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"] = lines(VOC_TRAIN)
    files["VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"] = lines(VOC_VAL)
    voc = tar(www / "VOCtrainval_11-May-2012.tar", files)
    sbd_files = {
        f"benchmark_RELEASE/dataset/cls/{n}.mat": sbd_mat(sbd_seg(i))
        for i, n in enumerate(SBD_TRAIN + SBD_VAL)
    }
    sbd_files["benchmark_RELEASE/dataset/train.txt"] = lines(SBD_TRAIN)
    sbd_files["benchmark_RELEASE/dataset/val.txt"] = lines(SBD_VAL)
    sbd = tar(www / "benchmark.tgz", sbd_files)
    return {"voc2012": served(server, "voc2012", voc), "sbd": served(server, "sbd", sbd)}


def test_voc_and_sbd_download_verify_extract_convert(tmp_path, voc_archives, capsys):
    root = tmp_path / "data"
    prepare_sbd(root, voc_archives)
    log = capsys.readouterr().err.splitlines()  # progress, in its plain form (not a terminal)
    for step in ("downloading benchmark.tgz: ", "extracting benchmark.tgz: ", "converting SBD"):
        assert any(line.startswith(step) and "(100%)" in line for line in log), step
    base = root / "VOCdevkit/VOC2012"
    aug = read_ids(base / "ImageSets/Segmentation/train_aug.txt")
    assert aug == ["a1", "a2", "s1", "s2"]  # VOC train + SBD, without the VOC val id v1
    # ids with an official VOC mask keep it; SBD-only ids come from the .mat files
    np.testing.assert_array_equal(read_mask(base / "SegmentationClassAug/a1.png"), voc_seg(0))
    np.testing.assert_array_equal(read_mask(base / "SegmentationClassAug/s2.png"), sbd_seg(3))
    assert Image.open(base / "SegmentationClassAug/s1.png").mode == "P"
    dm = VOCDataModule(str(root / "VOCdevkit"), aug=True, num_workers=0, crop_size=8)
    dm.setup("fit")
    assert dm.train_set.ids == aug and dm.val_set.ids == ["v1"]
    assert dm.train_set[2]["mask"].shape == (8, 8)
    prepare_sbd(root, voc_archives)  # idempotent: verified archives and masks are kept


def test_bad_checksum_names_the_file(tmp_path, voc_archives):
    wrong = Archive(voc_archives["voc2012"].url, "0" * 32)
    with pytest.raises(ValueError, match=r"VOCtrainval_11-May-2012\.tar has md5 .*expected 0{32}"):
        download(wrong, tmp_path / "dl")


def test_unreachable_url_says_what_to_do(tmp_path, server):
    with pytest.raises(UserError, match="cannot download .*missing.tar"):
        download(Archive(f"{server[1]}/missing.tar", None), tmp_path / "dl")


class FlakyHandler(Quiet):
    """Serves files, honouring `Range: bytes=N-` only if `ranges`; the first response is cut off
    after `cut` body bytes (the server closes the connection). Records each request's Range."""

    ranges, cut, seen = True, 0, []

    def do_GET(self):
        data = Path(self.translate_path(self.path)).read_bytes()
        wanted = self.headers.get("Range")
        self.seen.append(wanted)
        start = int(wanted.removeprefix("bytes=").split("-")[0]) if wanted and self.ranges else 0
        if start >= len(data) > 0:
            self.send_error(416)  # Range Not Satisfiable: nothing after `start`
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body, cut = data[start:], type(self).cut
        type(self).cut = 0  # only the first transfer is interrupted
        self.wfile.write(body[:cut] if cut else body)


@pytest.mark.parametrize("ranges", [True, False], ids=["range", "no-range"])
def test_an_interrupted_download_resumes_to_the_right_md5(tmp_path, ranges):
    www = tmp_path / "www"
    www.mkdir()
    payload = np.random.default_rng(0).bytes(300_000)
    (www / "big.tar").write_bytes(payload)
    handler = type("Handler", (FlakyHandler,), {"ranges": ranges, "cut": 120_000, "seen": []})
    with serving(www, handler) as url:
        archive = Archive(f"{url}/big.tar", md5sum(www / "big.tar"))
        with pytest.raises(UserError, match="closed after 120,000 of 300,000 bytes.*resumes"):
            download(archive, tmp_path / "dl")
        assert (tmp_path / "dl" / "big.tar.part").stat().st_size == 120_000  # kept for the resume
        path = download(archive, tmp_path / "dl")
    assert path.read_bytes() == payload and not (tmp_path / "dl" / "big.tar.part").exists()
    assert handler.seen == [None, "bytes=120000-"]  # the second request asks only for the rest


def test_a_complete_part_file_killed_before_its_rename_is_kept(tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "big.tar").write_bytes(np.random.default_rng(1).bytes(50_000))
    partial = tmp_path / "dl" / "big.tar.part"
    partial.parent.mkdir()
    partial.write_bytes((www / "big.tar").read_bytes())
    handler = type("Handler", (FlakyHandler,), {"seen": []})
    with serving(www, handler) as url:
        path = download(Archive(f"{url}/big.tar", md5sum(www / "big.tar")), tmp_path / "dl")
    assert handler.seen == ["bytes=50000-"] and path.read_bytes() == (www / "big.tar").read_bytes()


def test_an_interrupted_conversion_resumes_and_leaves_no_half_written_mask(tmp_path, capsys):
    masks = [sbd_seg(i) for i in range(6)]
    masks[3] = np.random.default_rng(0).integers(0, 21, (48, 64), dtype=np.uint8)  # a ~3 kB PNG
    pairs = []
    for i, mask in enumerate(masks):
        src = tmp_path / "cls" / f"m{i}.mat"
        src.parent.mkdir(exist_ok=True)
        src.write_bytes(sbd_mat(mask))
        pairs.append((src, tmp_path / "aug" / f"m{i}.png"))
    with file_size_limit(1500), pytest.raises(OSError):  # small masks fit, m3 does not
        convert_all(pairs, sbd_mask, "converting SBD")
    out = tmp_path / "aug"
    assert sorted(p.name for p in out.iterdir()) == ["m0.png", "m1.png", "m2.png"]  # no m3 part
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()

    assert convert_all(pairs, sbd_mask, "converting SBD") == [dst for _, dst in pairs]
    log = capsys.readouterr().err
    assert "converting SBD (3 converted before): 3/3 files (100%)" in log
    assert all(before[p.name] == p.stat().st_mtime_ns for p in out.iterdir() if p.name in before)
    for (_, dst), mask in zip(pairs, masks, strict=True):
        np.testing.assert_array_equal(read_mask(dst), mask)


# --- VOC 2010 based: Context and Person-Part -------------------------------------------------

V10_TRAIN, V10_VAL = ["2008_000001", "2008_000002"], ["2008_000003"]


def voc2010(server) -> Archive:
    names = V10_TRAIN + V10_VAL
    files = {f"VOCdevkit/VOC2010/JPEGImages/{n}.jpg": jpeg(i) for i, n in enumerate(names)}
    files["VOCdevkit/VOC2010/ImageSets/Main/train.txt"] = lines(V10_TRAIN)
    files["VOCdevkit/VOC2010/ImageSets/Main/val.txt"] = lines(V10_VAL)
    return served(server, "voc2010", tar(server[0] / "VOCtrainval_03-May-2010.tar", files))


def test_context_459_to_59_classes(tmp_path, server):
    label_map = np.full((H, W), 1, np.int32)  # 1 = accordion: not among the 59 -> background
    label_map[:, 4:8] = 2  # aeroplane -> 1
    label_map[:, 8:] = 459  # wood -> 59
    mats = {f"trainval/{n}.mat": mat({"LabelMap": label_map}) for n in V10_TRAIN + V10_VAL}
    context = tar(server[0] / "trainval.tar.gz", mats)
    ids_59 = [2, *range(100, 157), 459]  # 59 ids; only their order matters
    labels = server[0] / "59_labels.txt"
    labels.write_text("".join(f"{i}: class{i}\n" for i in ids_59))
    archives = {
        "voc2010": voc2010(server),
        "context": served(server, "context", context),
        "context_59": served(server, "context_59", labels),
    }
    root = tmp_path / "data"
    prepare_context(root, archives)
    mask = read_mask(root / "VOCdevkit/VOC2010/SegmentationClassContext/2008_000003.png")
    assert mask[0, 0] == 0 and mask[0, 5] == 1 and mask[0, 10] == 59
    dm = ContextDataModule(str(root / "VOCdevkit"), num_workers=0, crop_size=8)
    dm.setup()
    assert (dm.train_set.ids, dm.val_set.ids) == (V10_TRAIN, V10_VAL)
    assert dm.val_set[0]["mask"].max() == 59


def part_struct(parts: list[tuple[str, np.ndarray]]) -> np.ndarray:
    arr = np.zeros((1, len(parts)), dtype=[("part_name", "O"), ("mask", "O")])
    for j, (name, mask) in enumerate(parts):
        arr[0, j] = (name, mask.astype(np.uint8))
    return arr


def anno(objects: list[tuple[str, list]]) -> bytes:
    """PASCAL-Part layout: anno.objects(i).{class, class_ind, mask, parts(j).{part_name, mask}}."""
    arr = np.zeros((1, len(objects)), dtype=[("class", "O"), ("class_ind", "O"), ("mask", "O"),
                                             ("parts", "O")])  # fmt: skip
    for i, (cls, parts) in enumerate(objects):
        arr[0, i] = (cls, 15, np.ones((H, W), np.uint8), part_struct(parts))
    return mat({"anno": {"imname": "x", "objects": arr}})


def region(rows: slice) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[rows, :] = True
    return mask


def test_person_part_merges_parts(tmp_path, server):
    person = [("head", region(slice(0, 2))), ("neck", region(slice(2, 3))),
              ("luarm", region(slice(3, 4))), ("rhand", region(slice(4, 5))),
              ("ruleg", region(slice(5, 6))), ("lfoot", region(slice(6, 7)))]  # fmt: skip
    files = {
        "Annotations_Part/2008_000001.mat": anno([("person", person), ("dog", [])]),
        "Annotations_Part/2008_000002.mat": anno([("cat", [("head", region(slice(0, 3)))])]),
        "Annotations_Part/2008_000003.mat": anno([("person", person[:2])]),
    }
    parts = tar(server[0] / "trainval.tar.gz", files)
    archives = {"voc2010": voc2010(server), "pascal_parts": served(server, "parts", parts)}
    root = tmp_path / "data"
    prepare_person_part(root, archives)
    base = root / "VOCdevkit/VOC2010"
    mask = read_mask(base / "SegmentationPart/2008_000001.png")
    assert mask[:, 0].tolist() == [1, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0]
    dm = PersonPartDataModule(str(root / "VOCdevkit"), num_workers=0, crop_size=8)
    dm.setup()
    assert dm.train_set.ids == ["2008_000001"]  # the cat image has no person parts
    assert dm.val_set.ids == ["2008_000003"]


# --- Cityscapes -------------------------------------------------------------------------------


def zip_file(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    label_ids = np.zeros((H, W), np.uint8)  # 0 = unlabeled -> 255
    label_ids[:, 4:8] = 7  # road -> 0
    label_ids[:, 8:] = 26  # car -> 13
    gt, img = {}, {}
    for split, city in (("train", "aachen"), ("val", "lindau")):
        stem = f"{split}/{city}/{city}_000000_000019"
        gt[f"gtFine/{stem}_gtFine_labelIds.png"] = png(label_ids)
        img[f"leftImg8bit/{stem}_leftImg8bit.png"] = png(np.zeros((H, W, 3)))
    zip_file(root / "gtFine_trainvaltest.zip", gt)
    with pytest.raises(SystemExit) as exit_info:
        main(["cityscapes", "--root", str(root)])
    assert exit_info.value.code == 2  # leftImg8bit zip missing: instructions, not a traceback
    zip_file(root / "leftImg8bit_trainvaltest.zip", img)
    prepare_cityscapes(root)
    dm = CityscapesDataModule(str(root / "cityscapes"), num_workers=0, crop_size=8)
    dm.setup()
    assert dm.val_set.ids == ["lindau/lindau_000000_000019"]
    assert dm.val_set[0]["mask"][0, ::4].tolist() == [255, 0, 13, 13]


def test_cityscapes_without_zips_prints_login_instructions(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["cityscapes", "--root", str(tmp_path)])
    assert "cityscapes-dataset.com" in capsys.readouterr().err


def test_mask_writer_round_trip(tmp_path):
    mask = np.arange(H * W, dtype=np.uint8).reshape(H, W) % 21
    write_mask(mask, tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), mask)
