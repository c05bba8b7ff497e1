"""The service object (everything one server holds), the aiohttp application and its middleware:
JSON errors, metrics per route, and the token check."""
from __future__ import annotations

import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from aiohttp import web

from ..errors import EdgeclsError
from .config import ServeConfig
from .images import DecodeBudget, RequestError

SERVICE = web.AppKey("edgecls_service", object)
OPEN_PATHS = frozenset({"/", "/v2/health/live", "/v2/health/ready"})
STREAMING_ROUTES = frozenset({"/ws", "/stream.mjpg"})


class Service:
    """The server's parts: engine thread, admission, model store, live feed, metrics."""

    def __init__(self, cfg: ServeConfig, log: Callable[[str], None]):
        from .bodies import Uploads
        from .connections import ConnectionGuard
        from .engine import Admission, EngineWorker
        from .metrics import Metrics

        from ..console import redact

        self.cfg = cfg
        self.log = lambda message: log(redact(message))  # a source URL's password never reaches the log
        lim = cfg.limits
        self.connections = ConnectionGuard(lim.connections, lim.max_connections_per_client, lim.header_timeout,
                                           self.log)
        self.metrics = Metrics(self.state)
        self.worker = EngineWorker(observe=self.metrics.inference.observe)
        self.admission = Admission(cfg.limits.queue_size, self.worker, self.metrics.rejected.inc)
        self.decoder = ThreadPoolExecutor(cfg.limits.decode_threads, thread_name_prefix="edgecls-decode")
        self.decoding = DecodeBudget(lim.max_pixels)  # one full-size picture decoding at a time, or smaller ones
        self.uploads = Uploads()
        self.viewers: set = set()
        self.in_flight = 0                # requests being handled, viewer streams aside
        self.stopping = False
        self.store: Any = None
        self.feed: Any = None
        self.watch: Any = None

    def open(self, loop) -> None:
        """Open the model, start the engine thread, the stream and the folder watch."""
        from .learn import FrameCollector
        from .live import LiveFeed
        from .models import ModelStore
        from .watch import FolderWatch

        if self.cfg.artifact is None:  # serve --collect DIR SOURCE: no model yet
            from .nomodel import open_collect_only

            return open_collect_only(self, loop)
        learn = FrameCollector(self.cfg.learn) if self.cfg.learn.folder else None
        self.store = ModelStore(self.cfg, self.worker, lambda: self.feed.references(), self.log,
                                on_change=lambda m: self.metrics.set_model(self.cfg.name, m.describe()))
        self.store.start()
        self.worker.current = lambda: self.store.current
        self.worker.start()
        self.feed = LiveFeed(self.cfg, self.store, self.worker, loop, self.log, learn, self.metrics.learned.inc)
        self.feed.start()
        if self.cfg.watch is not None:
            self.watch = FolderWatch(self.cfg.watch, self.store, self.log)
            self.watch.start()

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if self.feed is not None:
            self.feed.stop()
        self.worker.stop()
        self.decoder.shutdown(wait=True)

    def live(self, detailed: bool = False) -> tuple[bool, list[str]]:
        """(live, reasons). Without `detailed`, what an anonymous caller may know (the open health
        routes): no exception text, no path, no source; detailed reasons are redacted."""
        from ..console import redact

        if self.worker.alive:
            return True, []
        error = self.worker.last_error
        return False, ["the engine thread is hung or gone" + (f" ({redact(error)})" if detailed and error else "")]

    def ready(self, detailed: bool = False) -> tuple[bool, list[str]]:
        """(ready, reasons); `detailed` as for `live`."""
        from ..console import redact

        reasons = []
        if self.stopping:
            reasons.append("shutting down")
        if not self.worker.healthy:
            reasons.append(f"the engine failed {self.worker.failures} times in a row: {redact(self.worker.last_error)}"
                           if detailed else "the engine is failing (the server log says why)")
        if self.feed is not None and not self.feed.delivering:
            error = self.feed.source_error
            reasons.append(f"no frame from {redact(self.cfg.source)} for {self.cfg.stale_after:g} s"
                           + (f": {redact(error)}" if error else "") if detailed else
                           f"no frame from the source for {self.cfg.stale_after:g} s")
        alive, why = self.live(detailed)
        return alive and not reasons, reasons + why

    def state(self) -> dict[str, Any]:
        """Scrape-time values for /metrics."""
        from .metrics import cpu_temperature

        feed = self.feed
        stats = feed.stats() if feed else {}
        return {"frames": feed.frames() if feed else {}, "fps": stats.get("fps"),
                "latency_p50_s": (stats["latency_ms"]["p50"] / 1e3) if stats.get("latency_ms") else None,
                "ready": int(self.ready()[0]), "live": int(self.live()[0]), "queue_depth": self.worker.depth,
                "in_progress": self.admission.inside, "cpu_temperature": cpu_temperature(),
                "viewers": dict(feed.viewers) if feed else {}}


def _route(request: web.Request) -> str:
    """The route's pattern (bounded label values), never the raw path."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def connection(request: web.Request, handler):
    """The connection guard sees the connection busy while its request is handled (no header
    deadline, never evicted); once stopping, every answer is its connection's last, so keep-alive
    clients cannot stretch the drain."""
    svc = request.app[SERVICE]
    with svc.connections.serving(request.transport):
        response = await handler(request)
    if svc.stopping:
        response.force_close()
    return response


@web.middleware
async def errors(request: web.Request, handler):
    """Every error as {"error": "..."} with its status; no traceback reaches a client."""
    try:
        return await handler(request)
    except RequestError as exc:
        response = web.json_response({"error": str(exc)}, status=exc.status, headers=exc.headers)
        if exc.status in (408, 413):  # the rest of the body is not read: the connection ends with this answer
            response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return web.json_response({"error": exc.reason}, status=exc.status, headers={
            k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")})
    except EdgeclsError as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except Exception as exc:  # noqa: BLE001 - an engine or server fault: logged, answered 500
        svc = request.app[SERVICE]
        if request.path.startswith(("/v2/models/", "/classify")):
            svc.metrics.inference_errors.inc()
        svc.log(f"{request.method} {_route(request)}: {type(exc).__name__}: {exc}")
        # The text may name paths or the source: it goes to the log, the client gets its kind.
        return web.json_response({"error": f"internal error ({type(exc).__name__}); the server log says more"},
                                 status=500)


@web.middleware
async def measured(request: web.Request, handler):
    svc = request.app[SERVICE]
    route = _route(request)
    streaming = route in STREAMING_ROUTES
    start = time.perf_counter()
    svc.in_flight += not streaming
    try:
        response = await handler(request)
    finally:
        svc.in_flight -= not streaming
    svc.metrics.requests.labels(route, str(response.status)).inc()
    if not streaming:
        svc.metrics.latency.labels(route).observe(time.perf_counter() - start)
    return response


@web.middleware
async def authorized(request: web.Request, handler):
    token = request.app[SERVICE].cfg.token
    if token is None or request.path in OPEN_PATHS:
        return await handler(request)
    if not token_matches(bearer(request.headers.get("Authorization", "")) or request.query.get("token", ""), token):
        raise RequestError(401, "missing or wrong token: send \"Authorization: Bearer TOKEN\"",
                           {"WWW-Authenticate": 'Bearer realm="edgecls"'})
    return await handler(request)


def bearer(header: str) -> str:
    """The credentials of an `Authorization: Bearer TOKEN` header ("" for another scheme); the scheme
    name is case-insensitive (RFC 7235 section 2.1) and one or more spaces may follow it."""
    scheme, _, credentials = header.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def token_matches(given: str, token: str) -> bool:
    """Constant-time comparison: the SHA-256 digests of both (always 32 bytes, so neither the
    token's length nor how much of it a guess matches shows in the time) by hmac.compare_digest."""
    import hashlib

    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "replace")).digest(),
                               hashlib.sha256(token.encode("utf-8")).digest())


def make_app(svc: Service) -> web.Application:
    from . import admin, api, collect, view

    # The biggest body a handler may read; each handler applies its own, smaller limit first.
    app = web.Application(middlewares=[connection, errors, measured, authorized],
                          client_max_size=max(svc.cfg.limits.max_upload_bytes, svc.cfg.limits.max_model_bytes))
    app[SERVICE] = svc
    app.add_routes(api.routes)
    app.add_routes(admin.routes)
    app.add_routes(view.routes)
    collect.register(app)  # --collect and the label page (their own modules)
    app.router.add_get("/metrics", metrics)
    app.on_shutdown.append(close_viewers)
    return app


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[SERVICE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def close_viewers(app: web.Application) -> None:
    """Long-lived viewer connections end first, so shutdown waits only for real requests."""
    svc = app[SERVICE]
    svc.stopping = True
    svc.feed.wake_all()  # viewers waiting for a frame end their loops
    for viewer in list(svc.viewers):
        if isinstance(viewer, web.WebSocketResponse):
            await viewer.close(code=1001, message=b"server shutting down")
