"""Decode-once image cache: every file of a dataset decoded and resized by the one `Preprocessing`,
on all cores, into a memory-mapped uint8 array on disk.

A cache is keyed by the file list (paths, sizes, modification times) and the preprocessing, so a
second run, `tune`, `cv` and ensembles skip decoding, and an edited or touched file invalidates it.
Datasets larger than RAM train from it because only the batches in use are paged in.

Location: ``$EDGECLS_CACHE`` if set, else ``$XDG_CACHE_HOME/edgecls`` (``~/.cache/edgecls``). Each
cache is one folder ``images-<key>/`` holding ``pixels.npy`` and ``meta.json``; a folder without
``meta.json`` is an unfinished build (a killed run) and is never read. `clean_caches` deletes them.
numpy and OpenCV only: this is the light layer, usable on a device.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import ImageError, OptionError
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
    """Hash of the file list (absolute path, size, mtime) and the preprocessing."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "preprocessing": preprocessing.to_dict()}, sort_keys=True).encode())
    h.update(_code_version().encode())
    for path in files:
        path = Path(path).resolve()
        try:
            st = path.stat()
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{path}\0{stamp}".encode())
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


def _decode_range(args: tuple[str, list[str], dict, int, int]) -> tuple[int, list[tuple[int, str]]]:
    """Worker: decode files[start:stop] into the shared memory-mapped array; return the failures."""
    pixels_path, files, prep, start, stop = args
    preprocessing = Preprocessing.from_dict(prep)
    out = np.load(pixels_path, mmap_mode="r+")
    errors = []
    for i in range(start, stop):
        try:
            out[i] = preprocessing.load(files[i])
        except ImageError as exc:
            errors.append((i, str(exc).removeprefix(f"{files[i]}: ")))
    out.flush()
    del out
    return stop - start, errors


def _pool(workers: int):
    """Worker processes: forked while no TensorFlow/JAX runtime is loaded (fast start), else
    spawned, because a fork would copy their threads half-way (spawn needs the usual
    `if __name__ == "__main__":` guard in a calling script)."""
    import multiprocessing as mp
    import sys

    heavy = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    method = "fork" if sys.platform == "linux" and not heavy else "spawn"
    return mp.get_context(method).Pool(workers)


def _open(folder: Path, files: list[Path]) -> ImageCache | None:
    try:
        meta = json.loads((folder / _META).read_text())
        images = np.load(folder / _PIXELS, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or len(images) != len(files):
        return None
    ok = np.ones(len(files), dtype=bool)
    skipped = []
    for i, reason in meta.get("bad", []):
        ok[i] = False
        skipped.append((files[i], reason))
    os.utime(folder / _META)  # last use, for clean_caches(older_than_days=...)
    return ImageCache(folder, files, images, ok, skipped)


def build_cache(files: Sequence[str | Path], preprocessing: Preprocessing, root: str | Path | None = None,
                workers: int | None = None, on_progress: Callable[[int], None] | None = None) -> ImageCache:
    """Open the cache for these files and preprocessing, decoding it first (in parallel) on a miss.

    Unreadable files are recorded with their reason (in `skipped`, and in the cache so a later hit
    reports them too) and marked in `ok`; they are never fatal here.
    """
    files = [Path(f) for f in files]
    if not files:
        raise OptionError("no files to cache")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise OptionError(f"workers must be at least 1, got {workers}")
    root = Path(root) if root else cache_root()
    folder = root / f"images-{cache_key(files, preprocessing)}"
    hit = _open(folder, files)
    if hit is not None:
        if on_progress:
            on_progress(len(files))
        return hit
    started = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    # A private build folder renamed into place: a killed build never looks like a cache.
    tmp = root / f".building-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    h, w = preprocessing.size
    np.lib.format.open_memmap(tmp / _PIXELS, mode="w+", dtype=np.uint8, shape=(len(files), h, w, 3)).flush()
    names = [str(f) for f in files]
    chunk = max(1, min(64, len(files) // (workers * 8) or 1))
    jobs = [(str(tmp / _PIXELS), names, preprocessing.to_dict(), s, min(s + chunk, len(files)))
            for s in range(0, len(files), chunk)]
    bad: list[tuple[int, str]] = []
    if workers == 1 or len(files) < 2 * chunk:
        results = map(_decode_range, jobs)
        for done, errors in results:
            bad += errors
            if on_progress:
                on_progress(done)
    else:
        with _pool(min(workers, len(jobs))) as pool:
            for done, errors in pool.imap_unordered(_decode_range, jobs):
                bad += errors
                if on_progress:
                    on_progress(done)
    bad.sort()
    meta = {"format": CACHE_FORMAT, "count": len(files), "size": [h, w], "preprocessing": preprocessing.to_dict(),
            "bad": bad, "created": time.time(), "decode_seconds": time.perf_counter() - started}
    atomic_write_text(tmp / _META, json.dumps(meta))
    if folder.exists() and _open(folder, files) is None:
        shutil.rmtree(folder, ignore_errors=True)  # a damaged cache (its meta.json gone): replace it
    try:
        tmp.rename(folder)
    except OSError:  # another process finished the same cache first; use theirs
        shutil.rmtree(tmp, ignore_errors=True)
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
