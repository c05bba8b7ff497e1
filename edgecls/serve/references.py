"""Reference pictures for checking a new model: the last few pictures the current model saw
(stream frames and /classify requests, at most one a second), scaled to at most 320 px wide.

They are kept in memory and in STATE_DIR/references/ (at most POOL small JPEGs, a folder only the
service user may read), written when the server stops and at most every SAVE_EVERY seconds
while it runs (an SD card sees a handful of writes an hour, not one a second), and read back when
it starts: a restarted server has pictures to compare an update with, so a relabelled model is
not waved through for want of them.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np

POOL = 8                  # pictures kept
WIDTH = 320               # pixels wide at most
SAVE_EVERY = 300.0        # seconds between writes while running
MAX_FILE_BYTES = 1 << 20  # a reference file larger than this is not one the server wrote


class ReferencePool:
    def __init__(self, folder: Path, log: Callable[[str], None]):
        self.folder, self.log = folder, log
        self._pictures: deque[np.ndarray] = deque(maxlen=POOL)
        self._last_claim = 0.0
        self._saved_at = time.monotonic()
        self._dirty = False
        self._lock = threading.Lock()

    def load(self) -> None:
        """The pictures saved by an earlier run (unreadable or oversized files are skipped)."""
        from ..errors import ImageError
        from ..preprocess import read_rgb

        files = sorted(self.folder.glob("ref-*.jpg")) if self.folder.is_dir() else []
        for path in files[:POOL]:
            try:
                if path.stat().st_size <= MAX_FILE_BYTES:
                    self._pictures.append(_fit(read_rgb(path)))
            except (ImageError, OSError):
                continue

    def claim(self) -> bool:
        """True at most once a second: the caller then passes a picture to `remember`."""
        now = time.perf_counter()
        if now - self._last_claim < 1.0:
            return False
        self._last_claim = now
        return True

    def remember(self, rgb: np.ndarray) -> None:
        """Keep a small copy of a picture the current model saw (any thread)."""
        self._pictures.append(_fit(rgb))
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY:
            self.save()

    def pictures(self) -> list[np.ndarray]:
        return list(self._pictures)

    def save(self) -> None:
        """Write the pool (each file atomically; files beyond it removed); a failure is logged, never raised."""
        from ..files import atomic_write_bytes
        from .images import encode_jpeg

        with self._lock:
            self._saved_at = time.monotonic()
            if not self._dirty:
                return
            self._dirty = False
            pictures = list(self._pictures)
            try:
                self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                for n, rgb in enumerate(pictures):
                    atomic_write_bytes(self.folder / f"ref-{n}.jpg", encode_jpeg(rgb, 90))
                for extra in sorted(self.folder.glob("ref-*.jpg"))[len(pictures):]:
                    extra.unlink(missing_ok=True)
            except Exception as exc:  # noqa: BLE001 - a full disk costs the next restart its references, nothing more
                self.log(f"could not save the reference pictures in {self.folder}: {exc}")


def _fit(rgb: np.ndarray) -> np.ndarray:
    from .images import fit_width

    return np.array(fit_width(rgb, WIDTH), order="C", copy=True)  # never a view of a frame that is reused
