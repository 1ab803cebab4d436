"""Download, checksum and extract official archives (tar, tgz, zip), resumably and safely."""

import hashlib
import http.client
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deeplab.runtime.errors import UserError
from deeplab.runtime.progress import Progress

CHUNK = 1 << 16  # bytes per read: small enough for a smooth rate, large enough to be cheap


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
    """Fetch `archive` into `dest_dir` unless a verified copy is there; return its path.

    The bytes go to `<name>.part`, renamed once complete; an interrupted `.part` is resumed."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / archive.filename
    if not path.is_file():
        partial = path.with_name(path.name + ".part")
        try:
            fetch_into(archive.url, partial)
        except (OSError, http.client.HTTPException) as err:
            raise UserError(
                f"cannot download {archive.url} ({err}): check the network and run the prepare "
                f"command again (it resumes {partial.name}), or fetch the file by hand into "
                f"{dest_dir}"
            ) from err
        partial.rename(path)
    verify(path, archive.md5)
    return path


def fetch_into(url: str, partial: Path) -> None:
    """Download `url` into `partial`, continuing from its current size with an HTTP Range request.

    A server that honours the range answers 206 and the bytes are appended; one that ignores it
    answers 200 with the whole file, which then replaces the partial copy. A transfer that ends
    short of Content-Length raises, keeping what arrived for the next try."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if have and err.code == 416:  # nothing after byte `have`: the partial copy is complete
            return
        raise
    with resp:
        if have and resp.status == 206:
            if not resp.headers.get("Content-Range", "").startswith(f"bytes {have}-"):
                raise OSError(f"the server sent another range than bytes {have}-")
            print(f"resuming {url} from byte {have}")
        else:
            have = 0
            print(f"downloading {url} -> {partial.with_suffix('')}")
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length else None
        with (
            open(partial, "ab" if have else "wb") as f,
            Progress(f"downloading {partial.stem}", total, "bytes", completed=have) as bar,
        ):
            while block := resp.read(CHUNK):
                f.write(block)
                bar.advance(len(block))
    if total is not None and bar.completed < total:
        raise OSError(f"the connection closed after {bar.completed:,} of {total:,} bytes")


def extract(path: Path, dest_dir: Path) -> None:
    """Unpack a tar (any compression) or zip archive into `dest_dir`, refusing unsafe paths.

    Member by member, to show progress (bytes of the archive read); an interrupted extraction is
    redone whole, since the caller marks an archive extracted only once this returns."""
    print(f"extracting {path} -> {dest_dir}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            members = zf.infolist()
            total = sum(m.compress_size for m in members)
            with Progress(f"extracting {path.name}", total, "bytes") as bar:
                for member in members:
                    zf.extract(member, dest_dir)
                    bar.advance(member.compress_size)
    elif tarfile.is_tarfile(path):
        with (
            open(path, "rb") as raw,
            tarfile.open(fileobj=raw) as tf,
            Progress(f"extracting {path.name}", path.stat().st_size, "bytes") as bar,
        ):
            for member in tf:
                tf.extract(member, dest_dir, filter="data")
                bar.advance(raw.tell() - bar.completed)
    else:
        raise UserError(f"{path} is neither a tar nor a zip archive: delete it and re-download")
