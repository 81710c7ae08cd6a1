"""What `mgd-ray prepare` reads and how it writes: the downloaded archives (tar, tgz, zip) or their
unpacked folders, checked before any work (found, readable, the published MD5 where there is one);
their members by path; output files written atomically, so that a killed run leaves no half-written
file and a second run skips what the first finished."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.io import DatasetError, decode_label
from ..schema import atomic_write

# MD5s published for the archives a user downloads, by file name: VOC's from its download page
# (also torchvision's VOCSegmentation), SBD's from its project page (also torchvision's
# SBDataset). Cityscapes publishes an .md5 file beside each archive: put it next to the archive as
# <archive>.md5 and it is checked too (so is any other archive's).
PUBLISHED_MD5 = {
    "VOCtrainval_11-May-2012.tar": "6cd6e144f989b92b3379bac3b3de84fd",
    "benchmark.tgz": "82b4d87ceb2ed10f6038a1cba92111cb",
}
_TRUNCATED = (tarfile.TarError, EOFError, zlib.error, OSError, zipfile.BadZipFile)


class PrepareError(DatasetError):
    """A source of `mgd-ray prepare` is missing, damaged or not what was expected; the message
    names it."""


def expected_md5(path: Path) -> tuple[str, str] | None:
    """(MD5, where it comes from) for the archive `path`: a sibling <archive>.md5 file (md5sum's
    format, or the bare digest), else the published one for its file name; None when neither."""
    sibling = path.with_name(path.name + ".md5")
    if sibling.is_file():
        words = sibling.read_text(encoding="utf-8").split()
        if not words or len(words[0]) != 32:
            raise PrepareError(f"checksum file {sibling}: expected an MD5 digest (md5sum format)")
        return words[0].lower(), str(sibling)
    if path.name in PUBLISHED_MD5:
        return PUBLISHED_MD5[path.name], f"published for {path.name}"
    return None


def verify_md5(path: Path) -> str:
    """Check `path` against its expected MD5 (expected_md5); return what was checked, in words.
    PrepareError names the file when the digest differs: a wrong or truncated download."""
    expected = expected_md5(path)
    if expected is None:
        return "no published checksum"
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != expected[0]:
        raise PrepareError(
            f"source {path}: MD5 {digest.hexdigest()}, expected {expected[0]} ({expected[1]}): "
            "a wrong or truncated download; download it again"
        )
    return f"MD5 ok ({expected[1]})"


@dataclass
class Source:
    """One archive or folder a user gave, with the paths of its files (posix, relative)."""

    path: Path
    form: str  # "folder", "tar" or "zip"
    names: list[str]
    checksum: str = ""

    def read(self, name: str) -> bytes:
        """The bytes of the member `name` (random access: cheap for folders, zips and plain tars;
        a compressed tar decompresses up to it, so use members() for many)."""
        try:
            if self.form == "folder":
                return (self.path / name).read_bytes()
            if self.form == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    return archive.read(name)
            with tarfile.open(self.path, "r:*") as archive:
                return archive.extractfile(name).read()
        except _TRUNCATED as exc:
            raise PrepareError(f"source {self.path}: cannot read {name} ({exc})") from exc

    def members(self, wanted: Callable[[str], bool]) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of every file whose name `wanted` accepts, in the archive's own order
        (one sequential pass, also over a compressed tar)."""
        try:
            if self.form == "folder":
                for name in self.names:
                    if wanted(name):
                        yield name, (self.path / name).read_bytes()
            elif self.form == "zip":
                with zipfile.ZipFile(self.path) as archive:
                    for name in archive.namelist():
                        if wanted(name):
                            yield name, archive.read(name)
            else:
                with tarfile.open(self.path, "r:*") as archive:
                    for member in archive:
                        if member.isfile() and wanted(member.name):
                            yield member.name, archive.extractfile(member).read()
        except _TRUNCATED as exc:
            raise PrepareError(
                f"source {self.path}: unreadable part way ({exc}): a truncated or damaged "
                "archive; download it again"
            ) from exc


def open_source(path: str | os.PathLike) -> Source:
    """A Source for `path`, its MD5 checked and its file list read (which reads a tar to its end:
    a truncated one fails here, before any output is written). PrepareError names the path when it
    is missing, not a folder / tar / zip, or damaged."""
    path = Path(path)
    if path.is_dir():
        names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        return Source(path, "folder", names, "a folder")
    if not path.is_file():
        raise PrepareError(
            f"source {path}: not found, expected a downloaded archive (.tar, .tgz, .zip) or the "
            "folder it unpacks to"
        )
    checksum = verify_md5(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if not n.endswith("/")]
            return Source(path, "zip", names, checksum)
        with tarfile.open(path, "r:*") as archive:
            names = [m.name for m in archive.getmembers() if m.isfile()]
        return Source(path, "tar", names, checksum)
    except tarfile.ReadError as exc:
        raise PrepareError(
            f"source {path}: not a tar, tgz or zip archive, or a truncated one ({exc})"
        ) from exc
    except _TRUNCATED as exc:
        raise PrepareError(
            f"source {path}: a truncated or damaged archive ({exc}); download it again"
        ) from exc


def decode_index_png(data: bytes, name: str) -> np.ndarray:
    """An 8-bit label PNG's stored values (grayscale, or a palette image's indices: VOC's
    SegmentationClass) as uint8 H x W; RGB images come back H x W x 3 for a colour map to
    convert."""
    return decode_label(
        io.BytesIO(data), name, ("L", "P", "RGB"), "a palette, grayscale or RGB PNG"
    )


def encode_png(label: np.ndarray, name: str) -> bytes:
    """A uint8 H x W label map as a grayscale PNG's bytes."""
    ok, buffer = cv2.imencode(".png", label)
    if not ok:
        raise PrepareError(f"label {name}: could not encode as PNG")
    return buffer.tobytes()


def write_once(path: Path, data: bytes | Callable[[], bytes]) -> bool:
    """Write `data` (bytes, or a function making them) to `path` atomically unless the file is
    there already (a finished file of an earlier run); True when written."""
    if path.is_file():
        return False
    payload = data() if callable(data) else data
    atomic_write(path, lambda f: f.write(payload))
    return True


def remove_partial(folder: Path) -> int:
    """Delete the temporary files a killed run left in `folder` (atomic_write's .<name>.*.tmp);
    return how many."""
    stale = list(folder.rglob(".*.tmp")) if folder.is_dir() else []
    for path in stale:
        path.unlink()
    return len(stale)
