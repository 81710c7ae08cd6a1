"""Files on the study's storage, local or remote (s3://, gs://), through pyarrow's filesystems,
the same layer Ray Train uses for its checkpoints. No Ray import: the engine reads and writes
stored teacher targets through it too."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile

import pyarrow.fs as pafs


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in uri:
        uri = os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def as_uri(path: str, storage_root: str) -> str:
    """A path as Ray reports it for a run under `storage_root`, as a URI these functions open: Ray
    gives checkpoint paths on its pyarrow filesystem, without the scheme (s3://bucket/a is
    "bucket/a"), so the root's scheme is put back; local paths are unchanged."""
    if "://" in path or "://" not in storage_root:
        return path
    return f"{storage_root.split('://', 1)[0]}://{path}"


def exists(uri: str) -> bool:
    fs, path = _resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def remove_tree(uri: str) -> None:
    """Delete the folder `uri` and everything under it; nothing happens when it is not there."""
    fs, path = _resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)


def upload(local_path: str, uri: str) -> None:
    """Copy a local file to `uri`; on a local filesystem the copy lands under a temporary name and
    is renamed into place, so a reader never sees half a file."""
    fs, path = _resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    partial = path + ".partial"
    if isinstance(fs, pafs.LocalFileSystem):
        # Same disk: a hard link shares the bytes (ImageNet files, teachers) instead of copying
        # them.
        try:
            if os.path.exists(partial):
                os.remove(partial)
            os.link(local_path, partial)
            os.replace(partial, path)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy
    pafs.copy_files(local_path, partial, destination_filesystem=fs)
    fs.move(partial, path)


def download(uri: str, local_dir: str | None = None) -> str:
    """Copy `uri` into a local folder (a new temporary one by default); return the local path.
    A local `uri` is returned as it is."""
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    fs, path = _resolve(uri)
    local_dir = local_dir or tempfile.mkdtemp(prefix="mgd-download-")
    local_path = os.path.join(local_dir, os.path.basename(path))
    pafs.copy_files(path, local_path, source_filesystem=fs)
    return local_path


def read_bytes(uri: str) -> bytes:
    """The whole content of the file `uri`, as stored (pyarrow would otherwise decompress a file
    whose name ends in .zst or .gz on the fly: compression=None everywhere here)."""
    fs, path = _resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write `data` to `uri` so that a reader sees the previous file or the complete new one: on a
    local filesystem under a unique temporary name renamed into place (two writers of the same
    file never share a temporary), on an object store as one upload (a PUT is atomic)."""
    fs, path = _resolve(uri)
    fs.create_dir(os.path.dirname(path), recursive=True)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path, compression=None) as f:
            f.write(data)
        return
    partial = f"{path}.{secrets.token_hex(4)}.partial"
    try:
        with open(partial, "wb") as f:
            f.write(data)
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def list_files(uri: str) -> list[str]:
    """The names of the files directly in the folder `uri` ([] when there is no such folder)."""
    fs, path = _resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return [os.path.basename(i.path) for i in infos if i.type == pafs.FileType.File]


def tree_bytes(uri: str) -> int:
    """Bytes of every file under the folder `uri` (0 when there is no such folder)."""
    fs, path = _resolve(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return 0
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sum(i.size for i in infos if i.type == pafs.FileType.File)


def sha256(uri: str, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of the file `uri`'s bytes, streamed (a remote file is not kept locally). The
    digest is kept in `<uri>.sha256` beside the file, with the file's size and modification time,
    and read from there while those still match: every trial that checks a teacher's identity
    against a targets store would otherwise read the teacher's 570 MB (from S3, download them)."""
    fs, path = _resolve(uri)
    info = fs.get_file_info(path)
    stamp = f"{info.size} {info.mtime_ns}"
    sidecar = uri + ".sha256"
    try:
        kept = read_bytes(sidecar).decode().split()
    except (OSError, UnicodeDecodeError):
        kept = []
    if len(kept) == 3 and " ".join(kept[:2]) == stamp:
        return kept[2]
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as f:
        while block := f.read(chunk):
            digest.update(block)
    try:
        write_bytes(sidecar, f"{stamp} {digest.hexdigest()}".encode())
    except OSError:
        pass  # a read-only place (the user's own teacher files): computed again next time
    return digest.hexdigest()
