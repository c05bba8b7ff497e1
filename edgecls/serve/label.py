"""The label page (`/?view=label`) and its routes: the frames `--learn` kept and the photos
collected, newest first, each with the model's top-k and margin; one click or key gives the true
class (the file moves into the collection, DIR/<class>/) or discards it; several at once.

Fast with thousands of frames: the list lives in memory and is rebuilt only when a class
folder's modification time, `predictions.jsonl` or the collection changed; a page is a slice of
it, and thumbnails are decoded at a quarter of their size (libjpeg's scaled decoding). A request
names frames by the ids this list gave out (a lookup, never a path)."""
from __future__ import annotations

import asyncio
import json
import os
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from .collect import checked_class, collection_of, number, read_json
from .collection import Collection, now_iso
from .images import RequestError

QUEUE = web.AppKey("edgecls_label_queue", object)
SIDECAR = "predictions.jsonl"  # written by --learn (serve.learn)
MAX_IDS = 500
routes = web.RouteTableDef()


@dataclass
class Item:
    id: str                   # "k:<class>/<file>": kept by --learn; "c:<class>/<file>": collected
    path: str
    label: str                # the folder it is in: the predicted class (kept) or the class given (collected)
    time: float
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "kept" if self.id.startswith("k:") else "collected"

    def to_dict(self) -> dict[str, Any]:
        rec = self.record
        return {"id": self.id, "kind": self.kind, "class": self.label, "time": now_iso(self.time),
                "top_k": rec.get("top_k"), "margin": rec.get("margin"), "model": (rec.get("model") or {}).get("version")}


class LabelQueue:
    """What the label page lists (see the module's notes); safe to use from several threads."""

    def __init__(self, learn: Path | None, collection: Collection | None):
        self.learn, self.collection = (Path(learn) if learn else None), collection
        self._kept: dict[str, dict[str, Item]] = {}     # class folder -> id -> item
        self._folders: dict[str, int] = {}              # class folder -> mtime_ns when listed
        self._records: dict[str, dict] = {}             # kept file (class/name) -> its predictions.jsonl record
        self._sidecar = (0, 0)                          # (inode, bytes read)
        self._collected_version = -1
        self._order: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self._lock = threading.Lock()

    def refresh(self) -> None:
        with self._lock:
            changed = self._read_sidecar()
            changed = self._scan_kept() or changed
            version = self.collection.version if self.collection else 0
            if changed or version != self._collected_version:
                self._collected_version = version
                self._rebuild()

    def _scan_kept(self) -> bool:
        if self.learn is None or not self.learn.is_dir():
            return False
        seen, changed = set(), False
        for entry in os.scandir(self.learn):
            if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
                continue
            seen.add(entry.name)
            mtime = entry.stat().st_mtime_ns
            if self._folders.get(entry.name) != mtime:
                self._folders[entry.name], changed = mtime, True
                self._kept[entry.name] = {  # plain strings: 3,000 Path objects cost more than the listing
                    f"k:{entry.name}/{f.name}": Item(f"k:{entry.name}/{f.name}", f.path, entry.name,
                                                     f.stat().st_mtime)
                    for f in os.scandir(entry.path) if f.is_file(follow_symlinks=False) and f.name.endswith(".jpg")
                    and not f.name.startswith(".")}
        for gone in set(self._folders) - seen:
            self._folders.pop(gone)
            self._kept.pop(gone, None)
            changed = True
        return changed

    def _read_sidecar(self) -> bool:
        """New lines of predictions.jsonl (all of it again when --learn rewrote it after evicting)."""
        if self.learn is None:
            return False
        path = self.learn / SIDECAR
        try:
            st = path.stat()
        except FileNotFoundError:
            return False
        inode, done = self._sidecar
        if st.st_ino == inode and st.st_size == done:
            return False
        if st.st_ino != inode or st.st_size < done:
            self._records, done = {}, 0
        with open(path, "rb") as f:
            f.seek(done)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next look
        for line in complete.splitlines():
            try:
                rec = json.loads(line)
                self._records[rec["file"]] = rec
            except (ValueError, KeyError, TypeError):
                continue
        self._sidecar = (st.st_ino, done + len(complete))
        return True

    def _rebuild(self) -> None:
        items = []
        for folder in self._kept.values():
            for item in folder.values():
                item.record = self._records.get(item.id[2:], {})
                items.append(item)
        if self.collection is not None:
            for photo in self.collection.photos():
                prov = photo.provenance
                try:
                    when = datetime.fromisoformat(prov["time"]).timestamp()
                except (KeyError, TypeError, ValueError):
                    when = 0.0
                items.append(Item(f"c:{photo.file}", str(self.collection.path(photo)), photo.label, when,
                                  {"top_k": prov.get("top_k"), "margin": (prov.get("kept") or {}).get("margin"),
                                   "model": prov.get("model")}))
        items.sort(key=lambda i: i.time, reverse=True)
        self._order, self._by_id = items, {i.id: i for i in items}

    def page(self, offset: int, limit: int, kind: str) -> tuple[list[Item], int]:
        self.refresh()
        items = self._order if kind == "all" else [i for i in self._order if i.kind == kind]
        return items[offset : offset + limit], len(items)

    def find(self, ids: list[str]) -> tuple[list[Item], list[str]]:
        self.refresh()
        found = [self._by_id[i] for i in ids if i in self._by_id]
        return found, [i for i in ids if i not in self._by_id]

    def classes(self) -> list[str]:
        names = set(self.collection.counts()) if self.collection else set()
        return sorted(names | set(self._kept))

    def forget(self, item: Item) -> None:
        with self._lock:
            self._by_id.pop(item.id, None)
            if item.kind == "kept":
                self._kept.get(item.label, {}).pop(item.id, None)
            self._order = [i for i in self._order if i.id != item.id]


def attach(app: web.Application, learn: Path | None, collection: Collection | None) -> None:
    queue = app[QUEUE] = LabelQueue(learn, collection)
    # The first listing of thousands of kept frames is made at start, not by the first visitor.
    threading.Thread(target=queue.refresh, name="edgecls-label-list", daemon=True).start()


def _choices(request: web.Request, queue: LabelQueue) -> list[str]:
    """Classes offered: the collection's, the kept frames' folders, and a small model's labels."""
    from .api import service

    model = service(request).store.current
    labels = [] if model.version == "none" or len(model.labels) > 30 else list(model.labels)
    return sorted(set(queue.classes()) | set(labels))


@routes.get("/api/label")
async def listing(request: web.Request) -> web.Response:
    """?offset=0&limit=48&kind=all|kept|collected: one page of the list, newest first."""
    queue = request.app[QUEUE]
    try:
        offset, limit = int(request.query.get("offset", 0)), int(request.query.get("limit", 48))
    except ValueError:
        raise RequestError(400, "offset and limit must be integers") from None
    number({"offset": offset}, "offset", 0, 0, 10**9, integer=True)
    number({"limit": limit}, "limit", 48, 1, 200, integer=True)
    kind = request.query.get("kind", "all")
    if kind not in ("all", "kept", "collected"):
        raise RequestError(400, "kind must be all, kept or collected")
    items, total = await asyncio.to_thread(queue.page, offset, limit, kind)
    return web.json_response({"total": total, "offset": offset, "items": [i.to_dict() for i in items],
                              "classes": _choices(request, queue), "collect": queue.collection is not None})


@routes.get("/api/label/image")
async def image(request: web.Request) -> web.StreamResponse:
    """?id=ID[&thumb=1]: the picture of a listed frame (a thumbnail 240 px wide with thumb=1)."""
    items, _ = await asyncio.to_thread(request.app[QUEUE].find, [request.query.get("id", "")])
    path = Path(items[0].path) if items else None
    if path is None or not path.is_file():
        raise RequestError(404, "no such frame (labelled, discarded or evicted meanwhile?)")
    headers = {"Cache-Control": "private, max-age=600", "X-Content-Type-Options": "nosniff"}
    if request.query.get("thumb") != "1":
        return web.FileResponse(path, headers=headers)
    data = await asyncio.to_thread(_thumbnail, path)
    return web.Response(body=data, content_type="image/jpeg", headers=headers)


def _thumbnail(path: Path) -> bytes:
    import cv2
    import numpy as np

    from .images import encode_jpeg, fit_width

    bgr = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4 if path.suffix.lower() in (".jpg", ".jpeg")
                     else cv2.IMREAD_COLOR)
    if bgr is None:
        raise RequestError(404, "this frame cannot be read any more")
    return encode_jpeg(np.ascontiguousarray(fit_width(bgr[:, :, ::-1], 240)), 80)


@routes.post("/api/label")
async def assign(request: web.Request) -> web.Response:
    """{"ids": [...], "class": NAME} moves them into the collection's class folder;
    {"ids": [...], "discard": true} deletes them."""
    queue = request.app[QUEUE]
    doc = await read_json(request)
    ids = doc.get("ids")
    if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS or not all(isinstance(i, str) for i in ids):
        raise RequestError(400, f"\"ids\" must be a list of 1 to {MAX_IDS} frame ids from /api/label")
    discard = doc.get("discard") is True
    label = None if discard else checked_class(doc)
    collection = None if discard else collection_of(request)
    items, missing = await asyncio.to_thread(queue.find, ids)
    done, failed = await asyncio.to_thread(_apply, queue, items, label, collection)
    summary = collection.summary() if collection else {}
    return web.json_response({"done": done, "missing": missing, "failed": failed, **summary},
                             status=200 if done or not (failed or missing) else 409)


def _apply(queue: LabelQueue, items: list[Item], label: str | None, collection: Collection | None
           ) -> tuple[list[str], list[dict]]:
    """Move (or delete) each item; (ids done, [{"id", "error"}] for the rest)."""
    from .collection import CollectionFull

    done, failed = [], []
    for item in items:
        try:
            if label is None:
                _discard(queue, item)
            elif item.kind == "kept":
                rec = item.record
                collection.add_file(Path(item.path), label, {
                    "time": rec.get("time") or now_iso(item.time), "model": rec.get("model"),
                    "top_k": rec.get("top_k"), "why": f"kept by --learn (margin {rec.get('margin', 'unknown')})",
                    "kept": {k: rec.get(k) for k in ("margin", "entropy", "file")}, "by": "label page",
                    "labelled": now_iso()})
            else:
                collection.move(item.id[2:], label, {"labelled": now_iso(), "by": "label page"})
            queue.forget(item)
            done.append(item.id)
        except CollectionFull as exc:
            failed.append({"id": item.id, "error": str(exc)})
            break  # the rest would be refused the same way
        except FileNotFoundError:
            queue.forget(item)
            failed.append({"id": item.id, "error": "gone (evicted by --learn's disk cap meanwhile)"})
        except OSError as exc:
            failed.append({"id": item.id, "error": f"cannot move it: {exc.strerror or exc}"})
    return done, failed


def _discard(queue: LabelQueue, item: Item) -> None:
    if item.kind == "collected":
        queue.collection.remove(item.id[2:])
    else:
        os.unlink(item.path)

