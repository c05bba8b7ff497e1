"""Collect mode (`serve --collect DIR`): the page saves the current frame, at the camera's full
resolution, into DIR/<class>/, or a burst of N frames at a chosen interval; per-class counts; undo
of the last save. Also where the label page (`label`) and `edgecls pull`'s routes (`photos`) are
registered, since they share the collection.

Every route needs the token when the server has one (the app's middleware); bodies are small JSON
read with a limit and a deadline; a class name is checked (`photo_files.class_name`) before it
becomes a folder; the collection is capped on disk (`collection.Collection`)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .api import service
from .bodies import read_body
from .collection import Collection, CollectionFull, now_iso
from .images import RequestError

COLLECTION = web.AppKey("edgecls_collection", object)
BURST = web.AppKey("edgecls_collect_burst", asyncio.Lock)
LAST = web.AppKey("edgecls_collect_last", list)
MAX_BURST = 100                # frames in one burst
MAX_BURST_SECONDS = 60.0       # a burst's whole length (count x interval)
FRAME_WAIT = 3.0               # seconds a save waits for a frame newer than the last one saved
routes = web.RouteTableDef()


def register(app: web.Application) -> None:
    """Open the collection (when --collect is given) and add the collect, label and pull routes."""
    from . import label, photos
    from .app import SERVICE

    cfg = app[SERVICE].cfg
    opts = cfg.collect
    app[COLLECTION] = Collection(opts.folder, opts.max_mb) if opts.folder is not None else None
    app[BURST] = asyncio.Lock()  # one burst at a time
    app[LAST] = [0.0]            # when the last saved frame was classified: a frame is never saved twice
    label.attach(app, cfg.learn.folder, app[COLLECTION])
    app.add_routes(routes)
    app.add_routes(label.routes)
    app.add_routes(photos.routes)


def collection_of(request: web.Request) -> Collection:
    """The collection, or 404 saying how to turn collect mode on."""
    found = request.app[COLLECTION]
    if found is None:
        raise RequestError(404, "collect mode is off: start serve with --collect DIR (the folder the photos go to)")
    return found


async def read_json(request: web.Request, limit: int = 64 << 10) -> dict[str, Any]:
    """A small JSON object body, read with a size limit and the server's read deadline."""
    from ..files import loads_strict

    body = await read_body(request, limit, service(request).cfg.limits.read_timeout, f"{limit >> 10} KB")
    try:
        doc = loads_strict(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RequestError(400, "the body is not JSON") from None
    if not isinstance(doc, dict):
        raise RequestError(400, "the body must be a JSON object")
    return doc


def number(doc: dict, key: str, default: float, low: float, high: float, integer: bool = False) -> float:
    """doc[key] as a number within [low, high] (400 naming the field otherwise)."""
    value = doc.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise RequestError(400, f"\"{key}\" must be {'an integer' if integer else 'a number'}")
    if not low <= value <= high:
        raise RequestError(400, f"\"{key}\" must be within {low:g}..{high:g}, got {value:g}")
    return value


def checked_class(doc: dict, key: str = "class") -> str:
    from ..photo_files import NameRefused, class_name

    try:
        return class_name(doc.get(key))
    except NameRefused as exc:
        raise RequestError(400, f"\"{key}\": {exc}") from None


@routes.get("/api/collect")
async def summary(request: web.Request) -> web.Response:
    return web.json_response(collection_of(request).summary())


@routes.post("/api/collect")
async def collect(request: web.Request) -> web.Response:
    """{"class": NAME, "count": 1, "interval": 0.2}: save the current frame, or `count` frames,
    one every `interval` seconds, each newer than the one before."""
    collection = collection_of(request)
    doc = await read_json(request)
    label = checked_class(doc)
    count = int(number(doc, "count", 1, 1, MAX_BURST, integer=True))
    interval = number(doc, "interval", 0.2, 0.05, 10.0)
    if (count - 1) * interval > MAX_BURST_SECONDS:
        raise RequestError(400, f"a burst may last at most {MAX_BURST_SECONDS:g} s (count x interval)")
    svc = service(request)
    if request.app[BURST].locked():
        raise RequestError(409, "a burst is being saved; wait for it to end")
    async with request.app[BURST]:
        saved, stopped = await _save_frames(svc, collection, label, count, interval, request.app[LAST])
    collection.remember(saved)
    if not saved:
        raise RequestError(503, stopped or "nothing was saved")
    body = {"saved": saved, **collection.summary()}
    return web.json_response({**body, "stopped": stopped} if stopped else body)


async def _save_frames(svc, collection: Collection, label: str, count: int, interval: float,
                       last: list[float]) -> tuple[list[str], str | None]:
    """Save up to `count` frames, each newer than the last one saved (`last[0]`, its time); (files
    saved, why it stopped early or None)."""
    saved: list[str] = []
    next_at = time.monotonic()
    for _ in range(count):
        if svc.stopping:
            return saved, "the server is shutting down"
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = max(next_at, time.monotonic()) + interval
        frame = await _fresh_frame(svc.feed, last[0])
        if frame is None:
            return saved, f"no new frame from the source within {FRAME_WAIT:g} s"
        last[0] = frame[4]
        try:
            photo = await asyncio.to_thread(_save_one, svc, collection, label, frame)
        except CollectionFull as exc:
            return saved, str(exc)
        except OSError as exc:  # the disk itself (full, read-only): said, not a 500
            return saved, f"cannot write to {collection.root}: {exc.strerror or exc}"
        saved.append(photo.file)
    return saved, None


async def _fresh_frame(feed, last: float) -> tuple | None:
    deadline = time.monotonic() + FRAME_WAIT
    while time.monotonic() < deadline:
        newest = feed.newest
        if newest is not None and newest[4] > last:
            return newest
        await asyncio.sleep(0.02)
    return None


def _save_one(svc, collection: Collection, label: str, frame: tuple):
    """Encode one frame at full resolution and add it (in a worker thread)."""
    from .images import encode_jpeg

    index, rgb, top, model, wall = frame
    data = encode_jpeg(rgb, svc.cfg.collect.quality)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(wall)) + f"_{int(wall * 1000) % 1000:03d}_{index}"
    identity = None if model.version == "none" else {"version": str(model.version), "sha256": model.sha256}
    provenance = {"time": now_iso(wall), "why": "collected", "by": "collect", "frame": index,
                  "size": [int(rgb.shape[1]), int(rgb.shape[0])], "model": identity,
                  "top_k": [[name, round(p, 6)] for name, p in top] if top else None}
    return collection.add(data, label, f"{stamp}.jpg", provenance)


@routes.post("/api/collect/undo")
async def undo(request: web.Request) -> web.Response:
    """Take back the last save (one frame, or a whole burst)."""
    collection = collection_of(request)
    removed = await asyncio.to_thread(collection.undo)
    if not removed:
        raise RequestError(409, "nothing to undo")
    return web.json_response({"removed": removed, **collection.summary()})

