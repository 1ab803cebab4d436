"""Download, checksum and extract official archives (tar, tgz, zip), resumably and safely."""

import hashlib
import shutil
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deeplab.errors import UserError


@dataclass(frozen=True)
class Archive:
    """One official file: where it comes from and its md5 (None where none could be verified)."""

    url: str
    md5: str | None

    @property
    def filename(self) -> str:
        return self.url.rstrip("/").split("/")[-1]


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, md5: str | None) -> None:
    """Raise naming the file when its checksum is wrong; print the checksum when none is known."""
    actual = md5sum(path)
    if md5 is None:
        print(f"{path.name}: md5 {actual} (no official checksum to compare with)")
    elif actual != md5:
        raise UserError(
            f"{path} has md5 {actual}, expected {md5}: the download is corrupt or incomplete; "
            "delete the file and run the prepare command again"
        )


def download(archive: Archive, dest_dir: Path) -> Path:
    """Fetch `archive` into `dest_dir` unless a verified copy is there; return its path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / archive.filename
    if not path.is_file():
        partial = path.with_name(path.name + ".part")
        print(f"downloading {archive.url} -> {path}")
        try:
            with urllib.request.urlopen(archive.url, timeout=60) as resp, open(partial, "wb") as f:
                shutil.copyfileobj(resp, f, 1 << 20)
        except OSError as err:
            raise UserError(
                f"cannot download {archive.url} ({err}): check the network, or fetch the file "
                f"by hand into {dest_dir} and run the prepare command again"
            ) from err
        partial.rename(path)
    verify(path, archive.md5)
    return path


def extract(path: Path, dest_dir: Path) -> None:
    """Unpack a tar (any compression) or zip archive into `dest_dir`, refusing unsafe paths."""
    print(f"extracting {path} -> {dest_dir}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            zf.extractall(dest_dir)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            tf.extractall(dest_dir, filter="data")
    else:
        raise UserError(f"{path} is neither a tar nor a zip archive: delete it and re-download")
