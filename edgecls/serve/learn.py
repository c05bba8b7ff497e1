"""Frames to learn from: stream frames the model is unsure about, kept as an image folder that
`edgecls train` reads (one sub-folder per predicted class — move a file to its true class before
training) with `predictions.jsonl` beside the class folders (file, time, model, top-k, margin,
entropy). Capped per minute and on disk; the oldest frames are evicted first."""
from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .config import LearnOptions

SIDECAR = "predictions.jsonl"


def uncertainty(scores: np.ndarray) -> tuple[float, float]:
    """(margin between the two best probabilities, entropy normalised to [0, 1])."""
    p = np.clip(np.asarray(scores, dtype=np.float64), 0, None)
    total = p.sum()
    p = p / total if total > 0 else np.full_like(p, 1 / len(p))
    top = np.sort(p)[::-1]
    margin = float(top[0] - top[1]) if len(top) > 1 else 1.0
    nz = p[p > 0]
    entropy = float(-(nz * np.log(nz)).sum() / math.log(len(p))) if len(p) > 1 else 0.0
    return margin, entropy


def folder_name(label: str) -> str:
    """A class label as one safe folder name (no separators, no leading dot)."""
    name = "".join("_" if c in '/\\\0:*?"<>|' or not c.isprintable() else c for c in label).strip().lstrip(".")
    return name[:100] or "unnamed"


class FrameCollector:
    """Decides which frames to keep and writes them; safe to call from the stream's thread."""

    def __init__(self, options: LearnOptions):
        self.opts = options
        self.root = Path(options.folder)
        self.root.mkdir(parents=True, exist_ok=True)
        self._recent: deque[float] = deque()
        self._files: deque[tuple[Path, int]] = deque()  # oldest first
        self._bytes = 0
        self._lock = threading.Lock()
        self.saved = 0
        self._scan_existing()

    def _scan_existing(self) -> None:
        """Frames kept by an earlier run count against the disk cap, oldest first."""
        files = sorted((p for p in self.root.glob("*/*.jpg") if p.is_file()), key=lambda p: p.stat().st_mtime)
        for path in files:
            size = path.stat().st_size
            self._files.append((path, size))
            self._bytes += size

    def wanted(self, scores: np.ndarray) -> tuple[bool, float, float]:
        margin, entropy = uncertainty(scores)
        unsure = margin < self.opts.margin or (self.opts.entropy > 0 and entropy > self.opts.entropy)
        return unsure, margin, entropy

    def offer(self, rgb: np.ndarray, scores: np.ndarray, top: list, model: dict[str, Any] | Any,
              frame_index: int) -> Path | None:
        """Save the frame when the model is unsure and the caps allow; returns the file written."""
        unsure, margin, entropy = self.wanted(scores)
        now = time.time()
        with self._lock:
            while self._recent and now - self._recent[0] > 60:
                self._recent.popleft()
            if not unsure or len(self._recent) >= self.opts.per_minute:
                return None
            self._recent.append(now)
        return self._save(rgb, top, model, frame_index, margin, entropy, now)

    def _save(self, rgb, top, model, frame_index, margin, entropy, now) -> Path:
        from ..files import atomic_write_bytes
        from .images import encode_jpeg

        stamp = datetime.fromtimestamp(now, timezone.utc)
        path = self.root / folder_name(top[0][0]) / f"{stamp:%Y%m%dT%H%M%S_%f}_{frame_index}.jpg"
        data = encode_jpeg(rgb, self.opts.quality)
        atomic_write_bytes(path, data)
        if not isinstance(model, dict):  # a LoadedModel: only its identity goes into the sidecar
            model = {"version": str(model.version), "sha256": model.sha256}
        record = {"file": str(path.relative_to(self.root)), "time": stamp.isoformat(timespec="milliseconds"),
                  "model": model, "top_k": [[label, round(p, 6)] for label, p in top],
                  "margin": round(margin, 6), "entropy": round(entropy, 6)}
        with self._lock:
            self._files.append((path, len(data)))
            self._bytes += len(data)
            evicted = self._evict()
            self._write_sidecar(record, evicted)
            self.saved += 1
        return path

    def _evict(self) -> set[str]:
        cap = self.opts.max_mb * (1 << 20)
        evicted = set()
        while self._bytes > cap and len(self._files) > 1:
            path, size = self._files.popleft()
            path.unlink(missing_ok=True)
            self._bytes -= size
            evicted.add(str(path.relative_to(self.root)))
            if path.parent != self.root and not any(path.parent.iterdir()):
                path.parent.rmdir()  # `edgecls train` refuses an empty class folder
        return evicted

    def _write_sidecar(self, record: dict, evicted: set[str]) -> None:
        sidecar = self.root / SIDECAR
        if evicted:  # rewritten without the evicted frames (atomically): it lists what is on disk
            from ..files import atomic_write_text

            lines = sidecar.read_text(encoding="utf-8").splitlines() if sidecar.exists() else []
            kept = [line for line in lines if line and json.loads(line).get("file") not in evicted]
            atomic_write_text(sidecar, "".join(line + "\n" for line in kept) + json.dumps(record) + "\n")
        else:
            with open(sidecar, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
