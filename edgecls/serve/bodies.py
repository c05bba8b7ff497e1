"""Request bodies read with a size limit and a deadline: an oversized body is refused from its
Content-Length before it is read, a slow one is cut off (408) without holding up anyone else.

An image body has `--read-timeout` seconds in all. A model upload (up to `--max-model-mb`) gets an
`UploadClock`: every read (inside a part, and between parts) within `--read-timeout`, and the whole
upload within `--read-timeout` plus one second per MIN_UPLOAD_RATE bytes received, so a 256 MB
model over a slow link finishes while a trickle is cut off. At most MAX_UPLOADS are received at
once (each also takes a `--queue-size` slot), so parked uploads hold at most MAX_UPLOADS x
`--max-model-mb` on disk, and their files are removed when one stalls or its client leaves.
"""
from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Iterator, TypeVar

from .images import RequestError

CHUNK = 1 << 16
MIN_UPLOAD_RATE = 64 << 10   # bytes per second an upload must keep up on average, after --read-timeout
MAX_UPLOADS = 2              # model uploads received at once
MAX_FORM_PARTS = 8           # parts of a /classify form looked through for the image
T = TypeVar("T")


class UploadClock:
    """The deadlines of one upload: each read within `idle` seconds, the whole within `idle` seconds
    plus one per `min_rate` bytes received (Apache mod_reqtimeout's MinRate)."""

    def __init__(self, idle: float, min_rate: int = MIN_UPLOAD_RATE):
        self.idle, self.min_rate = idle, min_rate
        self.start, self.received = time.monotonic(), 0

    async def read(self, step: Awaitable[T]) -> T:
        """Await one read of the body under both deadlines (408 when either passes); a client that
        left is a 400 for nobody, not a server fault."""
        overall = self.start + self.idle + self.received / self.min_rate - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, min(self.idle, overall))):
                return await step
        except TimeoutError:
            why = (f"paused for more than {self.idle:g} s" if overall > self.idle else
                   f"arrives slower than {self.min_rate >> 10} KB/s after {self.idle:g} s")
            raise RequestError(408, f"the upload {why} (--read-timeout)") from None
        except ConnectionResetError:
            raise _gone() from None

    async def parts(self, request) -> AsyncIterator:
        """The parts of a multipart body, each reached within the deadlines."""
        reader = await request.multipart()
        while (part := await self.read(reader.next())) is not None:
            yield part


class Uploads:
    """At most `limit` uploads being received at once; more are answered 503."""

    def __init__(self, limit: int = MAX_UPLOADS):
        self.limit, self.inside = limit, 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.inside >= self.limit:
            raise RequestError(503, f"{self.inside} model uploads are being received; retry when one is done",
                               {"Retry-After": "10"})
        self.inside += 1  # only the event loop's thread touches the counter
        try:
            yield
        finally:
            self.inside -= 1


def _gone() -> RequestError:
    """A client that left while sending: nobody reads the answer, and it is no server fault to log."""
    return RequestError(400, "the client closed the connection while sending the body")


def _too_large(limit: int, what: str, option: str) -> RequestError:
    return RequestError(413, f"{what} is larger than {limit / (1 << 20):g} MB ({option})")


async def read_body(request, limit: int, timeout: float, option: str = "--max-upload-mb") -> bytes:
    """The whole body, at most `limit` bytes, within `timeout` seconds."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, "the body", option)
    parts, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit, "the body", option)
                parts.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s (--read-timeout)") from None
    except ConnectionResetError:
        raise _gone() from None
    return b"".join(parts)


async def read_part(part, limit: int, what: str, option: str, clock: UploadClock | None = None) -> bytes:
    """One multipart part into memory, at most `limit` bytes, within the clock's deadlines (without
    one, the caller's deadline applies)."""
    parts, size = [], 0
    while chunk := await (clock.read(part.read_chunk(CHUNK)) if clock else part.read_chunk(CHUNK)):
        size += len(chunk)
        if clock:
            clock.received += len(chunk)
        if size > limit:
            raise _too_large(limit, what, option)
        parts.append(chunk)
    return b"".join(parts)


async def save_part(part, path: Path, budget: list[int], option: str, clock: UploadClock) -> None:
    """One multipart part to a file the server named, charged against a shared byte budget, within
    the clock's deadlines."""
    with open(path, "wb") as f:
        while chunk := await clock.read(part.read_chunk(CHUNK)):
            clock.received += len(chunk)
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise RequestError(413, f"the upload is larger than the limit ({option})")
            f.write(chunk)


async def image_bytes(request, limit: int, timeout: float) -> bytes:
    """The image of a /classify request: a raw body, or the first file part (or the part named
    "image") of a multipart form."""
    if not request.content_type.startswith("multipart/"):
        return await read_body(request, limit, timeout)
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit, "the body", "--max-upload-mb")
    try:
        async with asyncio.timeout(timeout):
            reader = await request.multipart()
            count = 0
            async for part in reader:
                if part.name == "image" or part.filename:
                    return await read_part(part, limit, "the image", "--max-upload-mb")
                count += 1
                if count >= MAX_FORM_PARTS:  # parsing 100,000 empty parts held the event loop for seconds
                    raise RequestError(400, f"no file part among the first {MAX_FORM_PARTS} parts of the form "
                                            "(send the image as a part named \"image\")")
                await part.release()
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s (--read-timeout)") from None
    except ConnectionResetError:
        raise _gone() from None
    except ValueError as exc:  # a malformed multipart body
        raise RequestError(400, f"malformed multipart body: {exc}") from None
    raise RequestError(400, "the multipart form has no file part (send the image as a part named \"image\")")
