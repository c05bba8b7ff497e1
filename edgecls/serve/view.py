"""The live view: the page at /, and the newest frame over WebSocket or MJPEG.

Both transports send the shared encoding of the newest frame (see `live`); a viewer that is slow
to take frames simply gets fewer, never older ones. The page uses the transport chosen by
measurement (bench/serve_load.py; README "Run it as a service"); ?transport=mjpeg picks the other.
"""
from __future__ import annotations

import asyncio
import json
from importlib import resources

from aiohttp import WSMsgType, web

from .api import service

routes = web.RouteTableDef()
BOUNDARY = "edgeclsframe"


@routes.get("/")
async def page(request: web.Request) -> web.Response:
    """The live view, or the label page with ?view=label (both open: the token travels in the fragment)."""
    name = "label.html" if request.query.get("view") == "label" else "page.html"
    html = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html",
                        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                 "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
                                                            "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})


@routes.get("/api/status")
async def status(request: web.Request) -> web.Response:
    svc = service(request)
    latest = svc.feed.latest
    ready, reasons = svc.ready(detailed=True)  # behind the token, unlike the health routes
    return web.json_response({"model": {"name": svc.cfg.name, **svc.store.current.describe()}, "ready": ready,
                              "reasons": reasons, "has_source": svc.cfg.source is not None,
                              "latest": latest.header(False) if latest else None, **svc.feed.stats()})


@routes.get("/stream.mjpg")
async def mjpeg(request: web.Request) -> web.StreamResponse:
    svc = service(request)
    cam = request.query.get("cam") == "1"
    response = web.StreamResponse(headers={"Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                           "Cache-Control": "no-store"})
    await response.prepare(request)
    svc.viewers.add(response)
    try:
        with svc.feed.viewer("mjpeg", cam):
            seen = 0
            while not svc.stopping:
                frame = await svc.feed.newer_than(seen)
                seen = frame.version
                jpeg = frame.cam_jpeg if cam and frame.cam_jpeg else frame.jpeg
                await response.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n"
                                     f"X-Frame: {frame.index}\r\nX-Time: {frame.wall_time:.6f}\r\n\r\n".encode()
                                     + jpeg + b"\r\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        svc.viewers.discard(response)
    return response


@routes.get("/ws")
async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Per frame: a JSON text message (labels, stats), then the JPEG as a binary message.
    The client may send {"cam": true|false}."""
    svc = service(request)
    ws = web.WebSocketResponse(heartbeat=20, max_msg_size=4096)
    await ws.prepare(request)
    svc.viewers.add(ws)
    state = {"cam": request.query.get("cam") == "1", "changed": asyncio.Event()}
    reader = asyncio.create_task(_read_choices(ws, state))
    change = asyncio.ensure_future(state["changed"].wait())
    try:
        seen = 0
        while not ws.closed and not svc.stopping and not reader.done():
            cam = state["cam"]
            with svc.feed.viewer("websocket", cam):
                while cam == state["cam"] and not ws.closed and not svc.stopping:
                    frame = asyncio.ensure_future(svc.feed.newer_than(seen))
                    await asyncio.wait({frame, change, reader}, return_when=asyncio.FIRST_COMPLETED)
                    if not frame.done():  # the viewer changed its choice, or left
                        frame.cancel()
                        break
                    shown = frame.result()
                    seen = shown.version
                    await ws.send_str(json.dumps(shown.header(cam)))
                    await ws.send_bytes(shown.cam_jpeg if cam and shown.cam_jpeg else shown.jpeg)
            if change.done():
                state["changed"].clear()
                change = asyncio.ensure_future(state["changed"].wait())
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        reader.cancel()
        change.cancel()
        svc.viewers.discard(ws)
        await ws.close()
    return ws


async def _read_choices(ws: web.WebSocketResponse, state: dict) -> None:
    async for msg in ws:
        if msg.type != WSMsgType.TEXT:
            continue
        try:
            choice = json.loads(msg.data)
        except ValueError:
            continue
        if isinstance(choice, dict) and isinstance(choice.get("cam"), bool) and choice["cam"] != state["cam"]:
            state["cam"] = choice["cam"]
            state["changed"].set()
