"""The server process: open everything, listen, and on SIGTERM/SIGINT stop in order — readiness
false, stop accepting, end viewer streams, let in-flight requests finish, stop the stream and the
engine thread."""
from __future__ import annotations

import asyncio
import signal
from typing import Callable

from .config import ServeConfig


async def _serve(cfg: ServeConfig, log: Callable[[str], None], started: Callable[[str], None],
                 shutdown_timeout: float) -> None:
    from aiohttp import web

    from .app import Service, make_app

    loop = asyncio.get_running_loop()
    svc = Service(cfg, log)
    try:
        await asyncio.to_thread(svc.open, loop)
        runner = web.AppRunner(make_app(svc), handle_signals=False, access_log=None,
                               shutdown_timeout=shutdown_timeout)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        bound = runner.addresses[0]
        host = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        started(f"http://{host}:{bound[1]}/")
        await stop.wait()
        log("stopping: finishing requests in progress")
        svc.stopping = True  # readiness turns false first
        await runner.cleanup()  # stops listening, ends viewer streams, waits for in-flight requests
    finally:
        await asyncio.to_thread(svc.close)


def run(cfg: ServeConfig, log: Callable[[str], None], started: Callable[[str], None],
        shutdown_timeout: float = 30.0) -> None:
    """Serve until SIGTERM or SIGINT; return after a clean shutdown."""
    from .images import cap_opencv_pixels

    cap_opencv_pixels(cfg.limits.max_pixels)
    asyncio.run(_serve(cfg, log, started, shutdown_timeout))
