"""What the image cache's key costs on a large folder, and what a content hash would cost instead.

A cache hit computes the key over every file before it reads a single pixel, so its cost is paid
by every `train`, `cv` fold and `tune` trial. Compared on one folder of N distinct real photos
(copied round-robin from the given sources, so every file has its own inode and bytes):

- `data.scan` alone (listing the dataset, paid anyway);
- the old key: resolved path, size, mtime;
- the current key (`edgecls.cache.cache_key`): resolved path, size, mtime, ctime, inode;
- a content key: sha256 of every file's bytes, with the files in the page cache (warm) and
  evicted from it first (cold, posix_fadvise DONTNEED: what a first run after a reboot pays).

    python bench/cache_key_cost.py --files 20000 --folder /tmp/keybench /work/data/clothing /work/data/imagenet-samples
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgecls import data  # noqa: E402
from edgecls.cache import cache_key  # noqa: E402
from edgecls.preprocess import Preprocessing, is_image_name  # noqa: E402


def make_folder(folder: Path, sources: list[Path], count: int) -> Path:
    """`count` distinct photo files in two class folders (reused when already there)."""
    photos = sorted(p for s in sources for p in s.rglob("*") if p.is_file() and is_image_name(p))
    if not photos:
        raise SystemExit("no photos in the sources")
    have = sum(1 for _ in folder.rglob("*.*")) if folder.is_dir() else 0
    if have == count:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    for i in range(count):
        target = folder / f"class_{i % 2}" / f"{i:06d}{photos[i % len(photos)].suffix.lower()}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos[i % len(photos)], target)
    return folder


def old_key(files, preprocessing) -> str:
    h = hashlib.sha256(repr(preprocessing).encode())
    for path in files:
        path = Path(path).resolve()
        st = path.stat()
        h.update(f"\0{path}\0{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def content_key(files, preprocessing) -> str:
    h = hashlib.sha256(repr(preprocessing).encode())
    for path in files:
        h.update(os.fsencode(path))
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def evict(files) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn, runs: int, before=None) -> float:
    times = []
    for _ in range(runs):
        if before:
            before()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--folder", type=Path, default=Path("/tmp/edgecls-keybench"))
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    folder = make_folder(args.folder, args.sources, args.files)
    files = data.scan(folder).files
    size = sum(p.stat().st_size for p in files)
    prep = Preprocessing.named("tf", (224, 224))
    print(f"{len(files)} files, {size / 1e9:.2f} GB, in {folder}")
    rows = [
        ("data.scan (paid anyway)", timed(lambda: data.scan(folder), args.runs)),
        ("old key: path, size, mtime", timed(lambda: old_key(files, prep), args.runs)),
        ("current key: + ctime, inode", timed(lambda: cache_key(files, prep), args.runs)),
        ("content sha256, warm page cache", timed(lambda: content_key(files, prep), args.runs)),
        ("content sha256, cold (evicted)", timed(lambda: content_key(files, prep), max(1, args.runs // 2),
                                                 before=lambda: evict(files))),
    ]
    print("| key | seconds (median) |\n|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} |")


if __name__ == "__main__":
    main()
