"""Request bodies read with a size limit and a deadline: an oversized body is refused from its
Content-Length before it is read, a slow one is cut off (408) without holding up anyone else."""
from __future__ import annotations

import asyncio
from pathlib import Path

from .images import RequestError

CHUNK = 1 << 16


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
    return b"".join(parts)


async def read_part(part, limit: int, what: str, option: str) -> bytes:
    """One multipart part into memory, at most `limit` bytes."""
    parts, size = [], 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, what, option)
        parts.append(chunk)
    return b"".join(parts)


async def save_part(part, path: Path, budget: list[int], option: str, idle: float) -> None:
    """One multipart part to a file the server named, charged against a shared byte budget; a
    pause longer than `idle` seconds ends the upload (408)."""
    with open(path, "wb") as f:
        while True:
            try:
                async with asyncio.timeout(idle):
                    chunk = await part.read_chunk(CHUNK)
            except TimeoutError:
                raise RequestError(408, f"the upload paused for more than {idle:g} s (--read-timeout)") from None
            if not chunk:
                return
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
            async for part in reader:
                if part.name == "image" or part.filename:
                    return await read_part(part, limit, "the image", "--max-upload-mb")
                await part.release()
    except TimeoutError:
        raise RequestError(408, f"the body did not arrive within {timeout:g} s (--read-timeout)") from None
    except ValueError as exc:  # a malformed multipart body
        raise RequestError(400, f"malformed multipart body: {exc}") from None
    raise RequestError(400, "the multipart form has no file part (send the image as a part named \"image\")")
