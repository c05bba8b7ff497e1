"""Decode-once image cache: every file of a dataset decoded and resized by the one `Preprocessing`,
on all cores (edgecls.cache_workers), into a uint8 array on disk.

A cache is keyed by the file list (paths, sizes, modification and status-change times, inodes) and
the preprocessing, so a second run, `tune`, `cv` and ensembles skip decoding, and an edited,
replaced or touched file invalidates it. Datasets larger than RAM train from it because batches
are read with pread. A build reserves its whole size on disk before decoding and removes its
temporary folder when it fails or is interrupted.

Location: ``$EDGECLS_CACHE`` if set, else ``$XDG_CACHE_HOME/edgecls`` (``~/.cache/edgecls``). Each
cache is one folder ``images-<key>/`` holding ``pixels.npy`` and ``meta.json``; a folder without
``meta.json`` is an unfinished build (a killed run) and is never read. `clean_caches` deletes them.
numpy and OpenCV only: this is the light layer, usable on a device.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cache_workers import decode_into
from .errors import EdgeclsError, OptionError
from .files import atomic_write_text
from .preprocess import Preprocessing

CACHE_FORMAT = 1
_PIXELS, _META = "pixels.npy", "meta.json"


def cache_root() -> Path:
    """Where caches live: $EDGECLS_CACHE, else $XDG_CACHE_HOME/edgecls, else ~/.cache/edgecls."""
    env = os.environ.get("EDGECLS_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "edgecls"


def cache_key(files: Sequence[Path], preprocessing: Preprocessing) -> str:
    """Hash of the file list and the preprocessing.

    Each file counts with its absolute path (as bytes: a name that is not UTF-8 is still a name),
    size, modification and status-change times and inode, the stat fields git trusts for its
    index. `touch -r` can put an old modification time back on a replaced photo, but not its
    status-change time, which the kernel sets on every write, rename or metadata change.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "preprocessing": preprocessing.to_dict()}, sort_keys=True).encode())
    h.update(_code_version().encode())
    for path in files:
        path = Path(path).resolve()
        try:
            st = path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
        except OSError:
            stamp = "missing"
        h.update(b"\0" + os.fsencode(path) + b"\0" + stamp.encode())
    return h.hexdigest()[:24]


def _code_version() -> str:
    """The decoding code itself (preprocess.py and the OpenCV version): a change re-decodes."""
    import cv2

    from . import preprocess

    return hashlib.sha256(Path(preprocess.__file__).read_bytes()).hexdigest() + cv2.__version__


@dataclass
class ImageCache:
    """Decoded uint8 pictures for a list of files; `ok[i]` is False for files that could not be read."""

    path: Path
    files: list[Path]
    images: np.ndarray                 # (N, H, W, 3) uint8, memory-mapped read-only
    ok: np.ndarray                     # (N,) bool
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    built: bool = False                # True when this call decoded the images (a cache miss)
    seconds: float = 0.0
    _fd: int | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.files)

    def read(self, rows) -> np.ndarray:
        """Pictures `rows` copied out of the cache file with pread (runs of consecutive rows in one
        call). Unlike slicing the memory map, nothing stays mapped into the process, so a pass over
        a cache larger than RAM keeps the resident set small (the kernel's page cache does the rest).
        Thread-safe: every read names its own offset."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        if not hasattr(os, "preadv") or len(rows) == 0:
            out[:] = self.images[rows]
            return out
        if self._fd is None:
            self._fd = os.open(self.path / _PIXELS, os.O_RDONLY)
        row_bytes = out[0].nbytes if len(out) else 0
        flat = out.reshape(len(rows), -1)
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            view = memoryview(flat[start:stop]).cast("B")
            offset, done = int(self.images.offset) + int(rows[start]) * row_bytes, 0
            while done < len(view):
                got = os.preadv(self._fd, [view[done:]], offset + done)
                if got <= 0:
                    raise OSError(f"{self.path / _PIXELS}: cache file shorter than expected")
                done += got
            start = stop
        return out

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def _meta_ok(meta, count: int) -> bool:
    """A meta.json this version wrote: an object, the format, the count, well-formed failures."""
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("count") != count:
        return False
    bad = meta.get("bad", [])
    return isinstance(bad, list) and all(
        isinstance(b, list) and len(b) == 2 and isinstance(b[0], int) and not isinstance(b[0], bool)
        and 0 <= b[0] < count and isinstance(b[1], str) for b in bad)


def _open(folder: Path, files: list[Path]) -> ImageCache | None:
    """The finished cache in `folder`, or None when it is missing, unfinished or damaged."""
    try:
        meta = json.loads((folder / _META).read_text(encoding="utf-8"))
        images = np.load(folder / _PIXELS, mmap_mode="r")
    except (OSError, ValueError, RecursionError):
        return None
    if not _meta_ok(meta, len(files)) or images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(files):
        return None
    ok = np.ones(len(files), dtype=bool)
    skipped = []
    for i, reason in meta.get("bad", []):
        ok[i] = False
        skipped.append((files[i], reason))
    try:
        os.utime(folder / _META)  # last use, for clean_caches(older_than_days=...)
    except OSError:
        pass  # a read-only cache still serves
    return ImageCache(folder, files, images, ok, skipped)


def _origin(given: bool) -> str:
    if given:
        return "the cache_dir option"
    if os.environ.get("EDGECLS_CACHE"):
        return "EDGECLS_CACHE"
    return "XDG_CACHE_HOME" if os.environ.get("XDG_CACHE_HOME") else "the default ~/.cache/edgecls"


def _cache_error(root: Path, given: bool, what: str) -> EdgeclsError:
    return EdgeclsError(f"{root}: {what} (the image cache folder, from {_origin(given)}); set EDGECLS_CACHE to a "
                        "writable folder with room for the decoded images")


def _prepare_root(root: Path, given: bool) -> None:
    if root.exists() and not root.is_dir():
        raise _cache_error(root, given, "is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(root, given, f"cannot create it ({exc.strerror})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise _cache_error(root, given, "not writable")
    for old in root.glob(f".building-*-{socket.gethostname()}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)  # left by a build killed with SIGKILL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def build_cache(files: Sequence[str | Path], preprocessing: Preprocessing, root: str | Path | None = None,
                workers: int | None = None, on_progress: Callable[[int], None] | None = None) -> ImageCache:
    """Open the cache for these files and preprocessing, decoding it first (in parallel) on a miss.

    Unreadable files are recorded with their reason (in `skipped`, and in the cache so a later hit
    reports them too) and marked in `ok`; they are never fatal here. A build that fails (a full
    disk, a dead worker) or is interrupted removes its temporary folder and raises.
    """
    files = [Path(f) for f in files]
    if not files:
        raise OptionError("no files to cache")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise OptionError(f"workers must be at least 1, got {workers}")
    given = root is not None
    root = Path(root) if root else cache_root()
    folder = root / f"images-{cache_key(files, preprocessing)}"
    hit = _open(folder, files)
    if hit is not None:
        if on_progress:
            on_progress(len(files))
        return hit
    started = time.perf_counter()
    _prepare_root(root, given)
    # A private build folder renamed into place: a killed build never looks like a cache.
    tmp = root / f".building-{folder.name}-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        bad = decode_into(tmp / _PIXELS, files, preprocessing, workers, on_progress,
                          lambda what: _cache_error(root, given, what))
        h, w = preprocessing.size
        meta = {"format": CACHE_FORMAT, "count": len(files), "size": [h, w], "preprocessing": preprocessing.to_dict(),
                "bad": bad, "created": time.time(), "decode_seconds": time.perf_counter() - started}
        atomic_write_text(tmp / _META, json.dumps(meta, allow_nan=False))
        if folder.exists() and _open(folder, files) is None:
            shutil.rmtree(folder, ignore_errors=True)  # a damaged cache (its meta.json gone): replace it
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same cache first; use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        raise _cache_error(root, given, "no space left on the device while writing the image cache" if full
                           else f"cannot write the image cache ({exc.strerror or exc})") from None
    except BaseException:  # an error, Ctrl-C or SIGTERM: leave nothing behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cache = _open(folder, files)
    if cache is None:
        raise OptionError(f"{folder}: the image cache could not be reopened after building it")
    cache.built, cache.seconds = True, time.perf_counter() - started
    return cache


def cached_images(folder, preprocessing: Preprocessing, console=None, root: str | Path | None = None,
                  workers: int | None = None) -> ImageCache:
    """`build_cache` for an `ImageFolder`'s files with a rich progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("decoding images (cached)", total=len(folder.files))
        return build_cache(folder.files, preprocessing, root, workers, lambda n: progress.advance(task, n))


def clean_caches(root: str | Path | None = None, older_than_days: float = 0.0) -> tuple[int, int]:
    """Delete caches not used for `older_than_days` (0: all) and unfinished builds; returns
    (folders removed, bytes freed)."""
    if older_than_days < 0:
        raise OptionError(f"older_than_days must be >= 0, got {older_than_days}")
    root = Path(root) if root else cache_root()
    if not root.is_dir():
        return 0, 0
    cutoff = time.time() - older_than_days * 86400
    removed = freed = 0
    for folder in root.iterdir():
        if not folder.is_dir() or not (folder.name.startswith("images-") or folder.name.startswith(".building-")):
            continue
        meta = folder / _META
        if folder.name.startswith("images-") and meta.exists() and older_than_days and meta.stat().st_mtime > cutoff:
            continue
        if folder.name.startswith(".building-") and time.time() - folder.stat().st_mtime < 3600 and older_than_days:
            continue  # possibly a build in progress
        freed += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
    return removed, freed
