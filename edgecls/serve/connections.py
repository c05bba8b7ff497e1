"""Connections: how many the server holds and for how long, decided where they are accepted.

aiohttp caps neither the number of connections nor, until a 2026 fix (aio-libs/aiohttp#13681),
the wait for a first request's head (its keep-alive timer started after the first answer), and
asyncio's own accept path takes up to 100 connections per loop pass and makes their transports
passes later, so 1,100 connections that each sent half a request head exhausted the file
descriptors: every authorized request then failed in accept() with EMFILE (and a cap counted on
made transports overshoots by hundreds). So the server accepts connections itself (`ConnectionGuard.listen`:
one `sock_accept` at a time, each admitted socket handed to aiohttp's protocol factory, the
documented `runner.server`, with `loop.connect_accepted_socket`), and decides before a transport
exists:

- a connection must deliver a request head within `--header-timeout` seconds of opening, and of
  its previous answer (the same clock closes idle keep-alive connections; a request being handled,
  a WebSocket or an MJPEG stream is never cut by it: the middleware marks those busy);
- at most `--max-connections-per-client` from one address (more are answered 503 and closed);
- at most `--max-connections` in all, derived from the open-file limit with room for models,
  cameras, uploads and logs; when full, the connection that has been idle longest makes room
  (a newcomer is refused only when every connection is busy), so idle or slow-loris connections
  from many addresses cannot lock out an authorized client;
- when stopping, listening ends, idle connections close at once and answers carry `Connection: close`.

aiohttp also logged every malformed request head with a traceback ("Error handling request from
..."), so anyone on the LAN could fill the journal: `quiet_client_errors` makes that one escaped
line at most every 10 s, with a count.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Callable, Iterator

CONNECTION_CEILING = 1024      # the default never goes above this, whatever the open-file limit
ABORT_AFTER = 2.0              # a closed connection whose peer does not take its last bytes is dropped
BACKLOG = 128                  # connections the kernel queues for accept()


def open_file_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (what accept() runs into)."""
    try:
        import resource
    except ImportError:  # not POSIX: assume the common default
        return 1024
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def reserved_files(limit: int) -> int:
    """Descriptors kept for everything but connections: the model and its engine, a camera, upload
    and learn files, the watch scan, logs and the event loop (an idle server has 7 open; one
    accepted socket and the few closed to make room are in flight at a time)."""
    return max(64, limit // 4)


def default_max_connections(limit: int | None = None) -> int:
    """Connections allowed by default under the open-file limit, at most CONNECTION_CEILING."""
    limit = open_file_limit() if limit is None else limit
    return max(0, min(CONNECTION_CEILING, limit - reserved_files(limit)))


def _refuse_socket(sock: socket.socket, reason: str) -> None:
    """Answer 503 and close, without a transport: the descriptor is released at once."""
    body = ('{"error": "%s"}' % reason).encode()
    try:
        sock.setblocking(False)
        sock.recv(65536)  # what the client already sent: unread, it would turn the close into a reset
    except OSError:
        pass
    try:
        sock.send(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


class _Connection:
    __slots__ = ("transport", "client", "busy", "timer")

    def __init__(self, transport: Any, client: str):
        self.transport, self.client = transport, client
        self.busy = 0
        self.timer: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Counts, deadlines and eviction for the server's connections (event-loop thread only)."""

    def __init__(self, total: int, per_client: int, header_timeout: float, log: Callable[[str], None]):
        self.total, self.per_client, self.header_timeout, self.log = total, per_client, header_timeout, log
        self.open: dict[Any, _Connection] = {}            # transport -> connection
        self.idle: OrderedDict[_Connection, None] = OrderedDict()  # longest idle first
        self.by_client: dict[str, int] = {}
        self.refused = self.evicted = self.timed_out = 0
        self.stopping = False
        self._last_note = 0.0
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task] = []

    # --- listen and accept ----------------------------------------------------------------
    async def listen(self, factory: Callable[[], asyncio.Protocol], host: str, port: int) -> list[tuple]:
        """Bind HOST:PORT (every address it resolves to, as `loop.create_server` does) and accept
        connections for `factory`'s protocols until `stop`; returns the bound addresses."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        try:
            for family, _, _, _, address in dict.fromkeys(infos):
                self._listeners.append(socket.create_server(address, family=family, backlog=BACKLOG))
        except OSError:
            self.stop()
            raise
        for listener in self._listeners:
            listener.setblocking(False)
            self._accepting.append(asyncio.create_task(self._accept(listener, factory)))
        return [listener.getsockname() for listener in self._listeners]

    async def _accept(self, listener: socket.socket, factory: Callable[[], asyncio.Protocol]) -> None:
        """One connection at a time: admitted (its protocol made) or refused before the next accept,
        so no more than one descriptor is ever in flight beyond the counted ones."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, peer = await loop.sock_accept(listener)
            except OSError as exc:  # out of descriptors all the same (another part of the process): wait
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                self._refuse(f"accept() failed: {exc.strerror}", "the listening socket")
                await asyncio.sleep(0.5)
                continue
            client = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "local"
            refused = self._room_for(client)
            if refused is not None:
                _refuse_socket(sock, refused)
                continue
            try:
                await loop.connect_accepted_socket(lambda: _Guarded(self, client, factory()), sock)
            except OSError:
                sock.close()

    def _room_for(self, client: str) -> str | None:
        """None when a connection from `client` may open (closing the longest idle one if the
        server is full), else the reason it is refused."""
        if self.stopping:
            return "the server is shutting down"
        if self.by_client.get(client, 0) >= self.per_client:
            return self._refuse(f"too many connections from this address (--max-connections-per-client "
                                f"{self.per_client})", client)
        if len(self.open) >= self.total:
            if not self.idle:
                return self._refuse(f"too many connections (--max-connections {self.total})", client)
            self.evicted += 1
            self._close(next(iter(self.idle)))  # its count drops now; its descriptor on the next loop pass
        return None

    # --- open and leave ---------------------------------------------------------------------
    def admit(self, transport: Any, client: str) -> None:
        """Count a connection that `_accept` made room for."""
        conn = _Connection(transport, client)
        self.open[transport] = conn
        self.by_client[client] = self.by_client.get(client, 0) + 1
        self._idle(conn)

    def leave(self, transport: Any) -> None:
        conn = self.open.pop(transport, None)
        if conn is None:
            return
        self.idle.pop(conn, None)
        if conn.timer is not None:
            conn.timer.cancel()
        left = self.by_client[conn.client] - 1
        if left:
            self.by_client[conn.client] = left
        else:
            del self.by_client[conn.client]

    # --- busy and idle --------------------------------------------------------------------
    @contextmanager
    def serving(self, transport: Any) -> Iterator[None]:
        """Around a request's handler: the connection is busy (no deadline, never evicted)."""
        conn = self.open.get(transport)
        if conn is None:
            yield
            return
        conn.busy += 1
        self.idle.pop(conn, None)
        if conn.timer is not None:
            conn.timer.cancel()
            conn.timer = None
        try:
            yield
        finally:
            conn.busy -= 1
            if not conn.busy and conn.transport in self.open:
                self._idle(conn)

    def _idle(self, conn: _Connection) -> None:
        self.idle[conn] = None
        self.idle.move_to_end(conn)
        loop = asyncio.get_running_loop()
        conn.timer = loop.call_later(self.header_timeout, self._expire, conn)

    def _expire(self, conn: _Connection) -> None:
        conn.timer = None
        if not conn.busy and conn.transport in self.open:
            self.timed_out += 1
            self._close(conn)

    def stop(self) -> None:
        """Shutting down: stop listening and close every idle connection now; busy ones close after
        their answer."""
        self.stopping = True
        for task in self._accepting:
            task.cancel()
        for listener in self._listeners:
            listener.close()
        self._accepting, self._listeners = [], []
        for conn in list(self.idle):
            self._close(conn)

    def _close(self, conn: _Connection) -> None:
        transport = conn.transport
        self.leave(transport)
        transport.close()
        # close() waits for unsent bytes; a peer that never reads them would keep the descriptor.
        asyncio.get_running_loop().call_later(ABORT_AFTER, transport.abort)

    def _refuse(self, reason: str, client: str) -> str:
        self.refused += 1
        now = time.monotonic()
        if now - self._last_note > 10:  # a flood is one line per 10 s, not one per connection
            self._last_note = now
            self.log(f"refusing connections: {reason}; from {client}; {self.refused} refused so far, "
                     f"{len(self.open)} open")
        return reason

    def counts(self) -> dict[str, int]:
        return {"open": len(self.open), "idle": len(self.idle), "refused": self.refused, "evicted": self.evicted,
                "timed_out": self.timed_out}


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, counted by the guard."""

    __slots__ = ("_guard", "_client", "_inner", "_transport")

    def __init__(self, guard: ConnectionGuard, client: str, inner: asyncio.Protocol):
        self._guard, self._client, self._inner = guard, client, inner
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._guard.admit(transport, self._client)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.leave(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _ClientErrors(logging.Handler):
    def __init__(self, log: Callable[[str], None], every: float):
        super().__init__(logging.WARNING)
        self._log, self._every = log, every
        self._last, self._skipped = -every, 0

    def emit(self, record: logging.LogRecord) -> None:
        now = time.monotonic()
        if now - self._last < self._every:
            self._skipped += 1
            return
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage() + (f": {type(exc).__name__}: {exc}" if exc is not None else "")
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)  # the client's bytes, escaped
        more = f" ({self._skipped} more not shown)" if self._skipped else ""
        self._last, self._skipped = now, 0
        self._log(text[:300] + more)


def quiet_client_errors(log: Callable[[str], None], every: float = 10.0) -> None:
    """aiohttp's request errors (malformed heads, bodies cut off) as one line every `every` seconds
    at most, through `log`, instead of a traceback each."""
    logger = logging.getLogger("aiohttp.server")
    logger.handlers = [_ClientErrors(log, every)]
    logger.propagate = False
