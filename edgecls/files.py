"""Atomic file writes and checksums, shared by manifests, the image cache, checkpoints and models.

A write goes to a temporary sibling, is flushed to disk, renamed over the target and the rename
made durable by syncing the folder: a reader (or a run after a power cut) sees the old file or
the new one, never half of one, and a failed write leaves no temporary file behind.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB pieces."""
    import hashlib  # loads OpenSSL: only paid when a manifest asks for a checksum

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in `folder` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _open_temp(path: Path) -> tuple[Path, int]:
    # os.open with mode 0o666 lets the process umask decide the permissions (a model file is read
    # by others), without toggling the umask process-wide as mkstemp + chmod would need.
    while True:
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue


@contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces `path` atomically when the block ends
    without an exception; on an exception the temporary file is removed and `path` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling, fsync and rename, so readers never see half a file
    (not even after a power cut)."""
    with atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def commit_file(written: str | Path, path: str | Path) -> None:
    """Move a finished file (written by a library that wants a file name of its own, such as
    Keras) over `path`: synced to disk first, the rename made durable after."""
    written, path = Path(written), Path(path)
    with open(written, "rb") as f:
        os.fsync(f.fileno())
    os.replace(written, path)
    fsync_dir(path.parent)
