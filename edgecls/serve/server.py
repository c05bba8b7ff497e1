"""The server process: open everything, listen, and on SIGTERM/SIGINT stop in order — readiness
false, stop accepting, end viewer streams, let in-flight requests finish, stop the stream and the
engine thread."""
from __future__ import annotations

import asyncio
import gc
import signal
from typing import Callable

from .config import ServeConfig


async def _serve(cfg: ServeConfig, log: Callable[[str], None], started: Callable[[str], None],
                 shutdown_timeout: float) -> None:
    from aiohttp import web

    from .app import Service, make_app
    from .connections import quiet_client_errors

    quiet_client_errors(log)
    loop = asyncio.get_running_loop()
    svc = Service(cfg, log)
    try:
        await asyncio.to_thread(svc.open, loop)
        # Everything loaded so far lives as long as the server: keep it out of the collector's
        # scans, which would otherwise add pauses to request latency.
        gc.collect()
        gc.freeze()
        # lingering_time: how long the rest of a refused body is read and discarded before the
        # connection closes (aiohttp's default, 10 s, holds a connection for every 413).
        # keepalive_timeout: aiohttp's own idle clock agrees with the guard's header deadline.
        runner = web.AppRunner(make_app(svc), handle_signals=False, access_log=None,
                               shutdown_timeout=shutdown_timeout, lingering_time=1.0,
                               keepalive_timeout=cfg.limits.header_timeout)
        await runner.setup()
        # Listening is the guard's, not a TCPSite's: every connection is counted and timed before aiohttp sees it.
        addresses = await svc.connections.listen(runner.server, cfg.host, cfg.port)
        stop = asyncio.Event()
        from ..signals import ignored, own

        for sig in (signal.SIGTERM, signal.SIGINT):
            if ignored(sig):  # started with it ignored (nohup, a background job): it stays so
                continue
            loop.add_signal_handler(sig, stop.set)
            own(sig)  # a forked child (OpenVINO's telemetry) must not wake this loop with its SIGTERM
        bound = addresses[0]
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        started(f"http://{host}:{bound[1]}/")
        await stop.wait()
        log("stopping: finishing requests in progress")
        await _drain(svc, runner, shutdown_timeout)
        await runner.cleanup()
    finally:
        svc.connections.stop()
        await asyncio.to_thread(svc.close)


async def _drain(svc, runner, timeout: float) -> None:
    """Readiness false, stop listening, end viewer streams, then wait for requests in progress —
    including one whose body is still arriving (aiohttp's own shutdown would stop reading it)."""
    from .app import close_viewers

    svc.stopping = True
    svc.connections.stop()  # no more accepts; idle keep-alive connections close now, answers say Connection: close
    await close_viewers(runner.app)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while svc.in_flight and loop.time() < deadline:
        await asyncio.sleep(0.02)


def run(cfg: ServeConfig, log: Callable[[str], None], started: Callable[[str], None],
        shutdown_timeout: float = 30.0) -> None:
    """Serve until SIGTERM or SIGINT; return after a clean shutdown."""
    from .images import cap_opencv_pixels

    cap_opencv_pixels(cfg.limits.max_pixels)
    asyncio.run(_serve(cfg, log, started, shutdown_timeout))
