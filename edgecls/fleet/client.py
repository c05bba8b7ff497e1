"""What pull and push share: one device's URL and token, an aiohttp session with deadlines, and
errors that say which device and what to do (never a traceback)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from ..errors import EdgeclsError

CONNECT_TIMEOUT = 5.0     # seconds to reach a device
READ_TIMEOUT = 30.0       # seconds a device may stay silent mid-answer


class DeviceError(EdgeclsError):
    """A device could not be reached, refused us, or answered something unusable."""


def device_url(url: str) -> str:
    """`http://host:port` from what the user typed (a trailing slash or the page's path dropped);
    OptionError-like DeviceError for anything else."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DeviceError(f"{url!r} is not a device URL (expected http://HOST:PORT, as `edgecls serve` prints it)")
    if parts.username or parts.password:
        raise DeviceError(f"{parts.hostname}: put the token in --token-file, not in the URL")
    return f"{parts.scheme}://{parts.netloc}"


def session(token: str | None, read_timeout: float = READ_TIMEOUT) -> Any:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT, sock_read=read_timeout)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return aiohttp.ClientSession(timeout=timeout, headers=headers, raise_for_status=False)


def refusal(url: str, status: int, doc: Any) -> DeviceError:
    """A non-2xx answer as one line: 401 means the token, 404 what the device lacks."""
    reason = doc.get("error") if isinstance(doc, dict) else None
    reason = str(reason or f"HTTP {status}")[:300]
    if status == 401:
        return DeviceError(f"{url}: the device refused the token (401): check --token-file")
    return DeviceError(f"{url}: {reason} (HTTP {status})")


def unreachable(url: str, exc: BaseException) -> DeviceError:
    what = type(exc).__name__ if not str(exc) else f"{type(exc).__name__}: {exc}"
    return DeviceError(f"{url}: cannot reach the device ({what})")


async def get_json(http: Any, url: str, path: str) -> Any:
    """GET a JSON answer; DeviceError on a refusal, a lost connection or a body that is not JSON."""
    import asyncio

    import aiohttp

    try:
        async with http.get(url + path) as r:
            try:
                doc = await r.json(content_type=None)
            except ValueError:
                doc = None
            if r.status >= 400 or doc is None:
                raise refusal(url, r.status, doc)
            return doc
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise unreachable(url, exc) from None
