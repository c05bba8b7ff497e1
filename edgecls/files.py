"""Atomic file writes and checksums, shared by manifests, the image cache, checkpoints and models.

A write goes to a temporary sibling, is flushed to disk, renamed over the target and the rename
made durable by syncing the folder: a reader (or a run after a power cut) sees the old file or
the new one, never half of one, and a failed write leaves no temporary file behind.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import EdgeclsError


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
    with _removed_on_failure(tmp, path):
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


@contextmanager
def _removed_on_failure(tmp: Path, path: Path) -> Iterator[None]:
    """Remove the temporary `tmp` when the block fails or is interrupted; an OSError then names `path`."""
    try:
        yield
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _named(exc: OSError, path: Path) -> OSError:
    """The error with the file it was writing (a failed write() names no file: "No space left on
    device" alone does not say where)."""
    return exc if exc.filename else OSError(exc.errno, exc.strerror or str(exc), str(path))


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """A temporary sibling path (same suffix) for a writer that wants a file name (Keras): when the
    block succeeds it is synced and renamed to `path`; when it fails or is interrupted it is
    removed, and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.urandom(6).hex()}.tmp{path.suffix}")  # Keras wants the suffix
    with _removed_on_failure(tmp, path):
        yield tmp
        commit_file(tmp, path)


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


def strict_json(obj: Any, where: str, indent: int | None = None) -> str:
    """JSON text every parser accepts. A NaN or infinity (which Python would write as `NaN`, and
    strict parsers reject) is an EdgeclsError naming its field: a non-finite result is an error."""
    import json

    try:
        return json.dumps(obj, indent=indent, allow_nan=False)
    except ValueError:
        field, value = _non_finite(obj, "")
        raise EdgeclsError(f"{where}: {field or 'a value'} is {value}, not a finite number; refusing to write "
                           "it (non-finite results are errors, and JSON has no NaN or infinity)") from None


def _non_finite(obj: Any, at: str) -> tuple[str, Any]:
    if isinstance(obj, float) and not math.isfinite(obj):
        return at, obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{at}[{key}]" if isinstance(key, int) else f"{at}.{key}" if at else str(key))
        if found[0]:
            return found
    return "", None


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Strict JSON (`strict_json`), written atomically."""
    atomic_write_text(path, strict_json(obj, str(path), indent) + "\n")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (only finite numbers are)")


def loads_strict(text: str) -> Any:
    """Parse JSON as a strict parser would: NaN, Infinity and -Infinity are ValueErrors."""
    import json

    return json.loads(text, parse_constant=_refuse_constant)


def remove_partial_writes(folder: str | Path) -> None:
    """Remove what writes into `folder` left half done when their process was ended from another
    thread (`os._exit` runs no `finally`): the temporary siblings of `atomic_writer` and
    `atomic_output` (which `save_keras_model` uses), and of older `save_keras_model` versions."""
    import re

    pattern = re.compile(r"^\..+\.([0-9a-f]{12}\.tmp(\.[A-Za-z0-9]+)?|tmp\.keras)$")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if pattern.match(name):
            try:
                os.unlink(os.path.join(folder, name))
            except OSError:
                pass
