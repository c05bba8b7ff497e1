"""The device's labelled photos (`serve --collect DIR`): DIR/<class>/<file>.jpg, an image-folder
dataset `edgecls train` reads as it is, and DIR/.edgecls/index.jsonl, an append-only log of what
was added, moved or removed, with each photo's checksum and provenance (device, time, model,
why it was kept). `edgecls pull` reads the log's sequence numbers to fetch only what is new.

Bounded like `--learn`, but a full collection refuses new photos instead of evicting old ones:
these carry a person's labels. A photo on disk without a log entry (a crash between the two, or a
file copied in by hand) is indexed at start; an entry whose file is gone is dropped."""
from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import EdgeclsError
from ..photo_files import class_name, move_new, write_new

INDEX = "index.jsonl"
META = ".edgecls"
SUFFIXES = (".jpg", ".jpeg", ".png")


class CollectionFull(EdgeclsError):
    """No room for another photo (the --collect-max-mb cap, or the disk itself)."""


@dataclass
class Photo:
    seq: int
    file: str                    # class/name, relative to the collection
    sha256: str
    size: int
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.file.split("/", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "file": self.file, "class": self.label, "sha256": self.sha256, "size": self.size,
                "provenance": self.provenance}


def now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat(timespec="milliseconds")


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class Collection:
    """Thread-safe: saves run in worker threads, reads in the event loop."""

    def __init__(self, root: Path, max_mb: float, min_free_mb: float = 100.0):
        self.root = Path(root)
        self.max_bytes, self.min_free = int(max_mb * (1 << 20)), int(min_free_mb * (1 << 20))
        self.meta = self.root / META
        self.meta.mkdir(parents=True, exist_ok=True)
        if self.meta.is_symlink():
            raise EdgeclsError(f"{self.meta}: a link; the collection's index must be a folder of its own")
        self._lock = threading.RLock()
        self._photos: dict[str, Photo] = {}
        self._seq = 0
        self.bytes = 0
        self.version = 0          # bumped on every change: the label page rebuilds its list then
        self._undo: deque[list[str]] = deque(maxlen=20)
        self.device = self._identity()
        self._load()

    # --- identity and the log ---------------------------------------------------------------
    def _identity(self) -> dict[str, str]:
        """A stable id for this collection (pull keeps its state per id) and the host's name."""
        from ..files import atomic_write_json

        path = self.meta / "device.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("id"), str) and len(doc["id"]) == 32:
                return {"id": doc["id"], "host": socket.gethostname()}
        except (OSError, ValueError):
            pass
        doc = {"id": uuid.uuid4().hex}
        atomic_write_json(path, doc)
        return {"id": doc["id"], "host": socket.gethostname()}

    def _log(self, record: dict[str, Any]) -> None:
        from ..files import strict_json

        line = strict_json(record, str(self.meta / INDEX)) + "\n"
        with open(self.meta / INDEX, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _load(self) -> None:
        """Replay the log, then reconcile it with the disk (see the module's notes)."""
        lines = 0
        try:
            with open(self.meta / INDEX, encoding="utf-8") as f:
                for line in f:
                    lines += 1
                    self._replay(line)
        except FileNotFoundError:
            pass
        on_disk = self._scan()
        for rel in [r for r in self._photos if r not in on_disk]:
            del self._photos[rel]
        for rel, path in on_disk.items():
            if rel not in self._photos:
                data = path.read_bytes()
                self._seq += 1
                self._photos[rel] = Photo(self._seq, rel, _sha256(data), len(data),
                                          {"device": self.device["host"], "time": now_iso(path.stat().st_mtime),
                                           "why": "found in the collection folder"})
        self.bytes = sum(p.size for p in self._photos.values())
        if lines != len(self._photos):  # compact: the log lists exactly what is there
            self._rewrite()

    def _replay(self, line: str) -> None:
        try:
            rec = json.loads(line)
            op, rel, seq = rec["op"], rec["file"], int(rec["seq"])
        except (ValueError, KeyError, TypeError):
            return  # a line cut short by a power cut: the disk scan settles that photo
        self._seq = max(self._seq, seq)
        if op == "add":
            self._photos[rel] = Photo(seq, rel, rec.get("sha256", ""), int(rec.get("size", 0)),
                                      rec.get("provenance") or {})
        elif op == "remove":
            self._photos.pop(rel, None)

    def _scan(self) -> dict[str, Path]:
        found = {}
        for folder in self.root.iterdir():  # links are not followed: only files placed here are served
            if folder.is_symlink() or not folder.is_dir() or folder.name.startswith("."):
                continue
            for entry in os.scandir(folder):
                if entry.is_file(follow_symlinks=False) and entry.name.lower().endswith(SUFFIXES) \
                        and not entry.name.startswith("."):
                    found[f"{folder.name}/{entry.name}"] = Path(entry.path)
        return found

    def _rewrite(self) -> None:
        from ..files import atomic_write_text, strict_json

        text = "".join(strict_json({"op": "add", **p.to_dict()}, INDEX) + "\n"
                       for p in sorted(self._photos.values(), key=lambda p: p.seq))
        atomic_write_text(self.meta / INDEX, text)

    # --- reading ------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(sorted(Counter(p.label for p in self._photos.values()).items()))

    def summary(self) -> dict[str, Any]:
        return {"classes": self.counts(), "photos": len(self._photos), "bytes": self.bytes,
                "max_bytes": self.max_bytes, "undo": len(self._undo), "device": self.device}

    def photos(self) -> list[Photo]:
        with self._lock:
            return list(self._photos.values())

    def since(self, seq: int, limit: int) -> tuple[list[Photo], bool]:
        """Photos placed after `seq` (added, or moved to another class), oldest first; and whether more follow."""
        with self._lock:
            newer = sorted((p for p in self._photos.values() if p.seq > seq), key=lambda p: p.seq)
        return newer[:limit], len(newer) > limit

    def by_seq(self, seq: int) -> Photo | None:
        with self._lock:
            return next((p for p in self._photos.values() if p.seq == seq), None)

    def get(self, rel: str) -> Photo | None:
        return self._photos.get(rel)

    def path(self, photo: Photo) -> Path:
        return self.root / photo.file

    # --- changing -----------------------------------------------------------------------------
    def _room(self, size: int) -> None:
        if self.bytes + size > self.max_bytes:
            raise CollectionFull(f"the collection holds {self.bytes / (1 << 20):.1f} MB, the cap is "
                                 f"{self.max_bytes / (1 << 20):g} MB (--collect-max-mb): pull the photos, then "
                                 "remove them from the device or raise the cap")
        free = shutil.disk_usage(self.root).free
        if free - size < self.min_free:
            raise CollectionFull(f"the disk holding the collection has {free / (1 << 20):.0f} MB free; "
                                 f"{self.min_free / (1 << 20):g} MB are kept free for the system")

    def _placed(self, path: Path, sha: str, size: int, provenance: dict[str, Any]) -> Photo:
        rel = f"{path.parent.name}/{path.name}"
        self._seq += 1
        # `photo_id` stays with the photo through moves: pull tells a relabelled photo from a twin by it.
        photo = Photo(self._seq, rel, sha, size, {"device": self.device["host"], "photo_id": uuid.uuid4().hex,
                                                  **provenance})
        self._log({"op": "add", **photo.to_dict()})
        self._photos[rel] = photo
        self.bytes += size
        self.version += 1
        return photo

    def add(self, data: bytes, label: str, name: str, provenance: dict[str, Any]) -> Photo:
        """A new photo (encoded bytes) in class `label`; CollectionFull when there is no room."""
        label = class_name(label)
        with self._lock:
            self._room(len(data))
            path = write_new(self.root / label, name, data)
            return self._placed(path, _sha256(data), len(data), provenance)

    def add_file(self, source: Path, label: str, provenance: dict[str, Any]) -> Photo:
        """Move a photo from elsewhere on the device (a kept frame) into class `label`."""
        label = class_name(label)
        data = source.read_bytes()
        with self._lock:
            self._room(len(data))
            path = move_new(source, self.root / label)
            return self._placed(path, _sha256(data), len(data), provenance)

    def remove(self, rel: str) -> bool:
        with self._lock:
            photo = self._photos.pop(rel, None)
            if photo is None:
                return False
            (self.root / rel).unlink(missing_ok=True)
            self._prune((self.root / rel).parent)
            self._log({"op": "remove", "seq": photo.seq, "file": rel})
            self.bytes -= photo.size
            self.version += 1
            return True

    def move(self, rel: str, label: str, provenance: dict[str, Any]) -> Photo | None:
        """Give a collected photo another class (a new sequence number: pull sees it as placed anew)."""
        label = class_name(label)
        with self._lock:
            photo = self._photos.get(rel)
            if photo is None:
                return None
            if photo.label == label:
                return photo
            path = move_new(self.root / rel, self.root / label)
            self._prune((self.root / rel).parent)
            self._photos.pop(rel)
            self._log({"op": "remove", "seq": photo.seq, "file": rel})
            self.bytes -= photo.size
            return self._placed(path, photo.sha256, photo.size,
                                {**photo.provenance, **provenance, "relabelled_from": photo.label})

    @staticmethod
    def _prune(folder: Path) -> None:
        """An emptied class folder goes: `edgecls train` refuses an empty class."""
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (or already gone)

    def remember(self, files: list[str]) -> None:
        """One save (a frame or a burst) that `undo` can take back."""
        if files:
            with self._lock:
                self._undo.append(list(files))

    def undo(self) -> list[str]:
        """Remove the photos of the last save still in the collection."""
        with self._lock:
            if not self._undo:
                return []
            files = self._undo.pop()
            return [rel for rel in files if self.remove(rel)]
