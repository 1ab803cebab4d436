"""One prepare step per data set: fetch the official archives, extract, convert, write lists.

Every step is idempotent (verified archives and converted masks are kept) and leaves the layout
that the matching datamodule in `deeplab.data.datamodule` reads.
"""

import shutil
from pathlib import Path

from deeplab.data.dataset import read_ids
from deeplab.data.prepare import annotations
from deeplab.data.prepare.fetch import Archive, download, extract
from deeplab.runtime.atomic import written_atomically
from deeplab.runtime.errors import MissingFileError

# Checksums: "verified" = the same md5 in torchvision's tables and several other projects;
# "several projects" = the same md5 in independent download scripts, no official table;
# "one source" = from a single third-party download script (see docs/data.md); None = none found.
OFFICIAL = {
    "voc2012": Archive(  # verified
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "6cd6e144f989b92b3379bac3b3de84fd",
    ),
    "sbd": Archive(  # verified
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
        "benchmark.tgz",
        "82b4d87ceb2ed10f6038a1cba92111cb",
    ),
    "voc2010": Archive(  # verified
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
        "da459979d0c395079b5c75ee67908abb",
    ),
    "context": Archive(  # one source
        "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
        "df034edb2c12aa7d33b42b20bb1796e3",
    ),
    "context_59": Archive(  # one source
        "https://cs.stanford.edu/~roozbeh/pascal-context/59_labels.txt",
        "993901f2d930cc038c406845f08fa082",
    ),
    "pascal_parts": Archive(  # several projects
        "http://roozbehm.info/pascal-parts/trainval.tar.gz", "2fa0a19ee9b5e43b2bee520166111120"
    ),
}


def fetch(name: str, root: Path, archives: dict, subdir: str = "") -> Path:
    """Download one archive into root/downloads/<name>/ and extract it into root/subdir once."""
    path = download(archives[name], root / "downloads" / name)
    stamp = path.with_name(path.name + ".extracted")
    if path.suffix != ".txt" and not stamp.is_file():
        extract(path, root / subdir)
        stamp.touch()
    return path


def write_list(path: Path, ids) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in sorted(ids)))
    print(f"wrote {path} ({len(ids)} ids)")


def prepare_voc(root: Path, archives: dict = OFFICIAL) -> None:
    """VOC 2012 -> root/VOCdevkit/VOC2012 with its official train/val lists (1,464 / 1,449)."""
    fetch("voc2012", root, archives)
    for split in ("train", "val"):
        read_ids(root / f"VOCdevkit/VOC2012/ImageSets/Segmentation/{split}.txt")


def prepare_sbd(root: Path, archives: dict = OFFICIAL) -> None:
    """SBD -> VOC2012/SegmentationClassAug/*.png and train_aug.txt (10,582 ids).

    train_aug = VOC train + SBD train + SBD val, minus every VOC val id. Ids with an official VOC
    mask keep it (with its 255 band); the rest come from SBD's `cls/*.mat`. An existing
    `benchmark_RELEASE/` under root is used as is, without downloading.
    """
    voc = root / "VOCdevkit/VOC2012"
    if not voc.is_dir():
        prepare_voc(root, archives)
    sbd = root / "benchmark_RELEASE/dataset"
    if not sbd.is_dir():
        fetch("sbd", root, archives)
    voc_train = read_ids(voc / "ImageSets/Segmentation/train.txt")
    voc_val = set(read_ids(voc / "ImageSets/Segmentation/val.txt"))
    sbd_ids = read_ids(sbd / "train.txt") + read_ids(sbd / "val.txt")
    train_aug = sorted((set(voc_train) | set(sbd_ids)) - voc_val)
    aug_dir = voc / "SegmentationClassAug"
    aug_dir.mkdir(exist_ok=True)
    for name in train_aug:
        official = voc / "SegmentationClass" / f"{name}.png"
        if official.is_file() and not (aug_dir / f"{name}.png").is_file():
            with written_atomically(aug_dir / f"{name}.png") as tmp:
                shutil.copyfile(official, tmp)
    pairs = [(sbd / "cls" / f"{n}.mat", aug_dir / f"{n}.png") for n in train_aug]
    missing = [src for src, dst in pairs if not dst.is_file() and not src.is_file()]
    if missing:
        raise MissingFileError(
            f"{missing[0]} (and {len(missing) - 1} more) missing: re-extract SBD"
        )
    annotations.convert_all(pairs, annotations.sbd_mask, "converting SBD .mat")
    write_list(voc / "ImageSets/Segmentation/train_aug.txt", train_aug)


def voc2010_split(root: Path, split: str) -> list[str]:
    """VOC2010 Main/{train,val}.txt: 4,998 / 5,105 images, the Context and Person-Part splits."""
    return read_ids(root / f"VOCdevkit/VOC2010/ImageSets/Main/{split}.txt")


def prepare_context(root: Path, archives: dict = OFFICIAL) -> None:
    """PASCAL-Context (official 459-class .mat release) -> 60-class PNGs on VOC2010 images.

    The 59 classes of the official 59_labels.txt become 1..59, all other classes background 0.
    """
    fetch("voc2010", root, archives)
    fetch("context", root, archives, "pascal-context")
    lut = annotations.context_lut(fetch("context_59", root, archives))
    base = root / "VOCdevkit/VOC2010"
    mats = {p.stem: p for p in (root / "pascal-context").rglob("*.mat")}
    for split in ("train", "val"):
        ids = [i for i in voc2010_split(root, split) if i in mats]
        pairs = [(mats[i], base / "SegmentationClassContext" / f"{i}.png") for i in ids]
        annotations.convert_all(
            pairs, lambda p: annotations.context_mask(p, lut), f"converting Context {split}"
        )
        write_list(base / f"ImageSets/SegmentationContext/{split}.txt", ids)


def prepare_person_part(root: Path, archives: dict = OFFICIAL) -> None:
    """PASCAL-Person-Part from the PASCAL-Part release (`Annotations_Part/*.mat`).

    Lists: VOC2010 Main train/val images that have at least one annotated person part (the
    paper's lists count 1,716 / 1,817; this rule is our reconstruction and may differ slightly).
    """
    fetch("voc2010", root, archives)
    fetch("pascal_parts", root, archives, "pascal-parts")
    base = root / "VOCdevkit/VOC2010"
    mats = {p.stem: p for p in (root / "pascal-parts").rglob("Annotations_Part/*.mat")}
    for split in ("train", "val"):
        ids = [i for i in voc2010_split(root, split) if i in mats]
        pairs = [(mats[i], base / "SegmentationPart" / f"{i}.png") for i in ids]
        done = annotations.convert_all(
            pairs, annotations.person_part_mask, f"converting Person-Part {split}"
        )
        write_list(base / f"ImageSets/PersonPart/{split}.txt", [p.stem for p in done])


CITYSCAPES_HELP = """Cityscapes needs a (free) login, so it cannot be downloaded here.
1. Register at https://www.cityscapes-dataset.com/ and download gtFine_trainvaltest.zip and
   leftImg8bit_trainvaltest.zip (or run `csDownload gtFine_trainvaltest.zip
   leftImg8bit_trainvaltest.zip` from cityscapesscripts, which asks for the login).
2. Put both zips into {root}/ and run this command again."""


def prepare_cityscapes(root: Path, archives: dict = OFFICIAL) -> None:
    """Extract the user's zips into root/cityscapes, write *_gtFine_trainIds.png and lists."""
    base = root / "cityscapes"
    for zip_name, folder in (
        ("gtFine_trainvaltest.zip", "gtFine"),
        ("leftImg8bit_trainvaltest.zip", "leftImg8bit"),
    ):
        if (base / folder).is_dir():
            continue
        zip_path = next((p for p in (root / zip_name, base / zip_name) if p.is_file()), None)
        if zip_path is None:
            raise MissingFileError(CITYSCAPES_HELP.format(root=base))
        extract(zip_path, base)
    lut = annotations.cityscapes_lut()
    for split in ("train", "val"):
        sources = sorted((base / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))
        if not sources:
            raise MissingFileError(f"no *_gtFine_labelIds.png under {base / 'gtFine' / split}")
        pairs = [(p, p.with_name(p.name.replace("labelIds", "trainIds"))) for p in sources]
        annotations.convert_all(
            pairs, lambda p: annotations.cityscapes_mask(p, lut), f"converting Cityscapes {split}"
        )
        ids = [f"{p.parent.name}/{p.name.removesuffix('_gtFine_labelIds.png')}" for p in sources]
        write_list(base / "lists" / f"{split}.txt", ids)
