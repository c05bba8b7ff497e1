"""`edgecls pull URL --out DATASET`: a device's labelled photos (`serve --collect`) into an
image-folder dataset on the workstation.

- Incremental: the device numbers every placement of a photo; DATASET/.edgecls-pull/<device>.json
  keeps the last number fetched and where each photo (by the device's photo id) went, so a second
  pull asks only for what is newer and fetches only photos it has not seen. A photo the device moved to
  another class (the label page) is moved here too; one you deleted here is not fetched again.
- Checksummed and resumable: each photo streams into .edgecls-pull/partial/<sha256>.part; a
  dropped connection is retried with a Range request from where the part file ends (also by the
  next pull after a killed one), and only a file whose SHA-256 matches is placed.
- Never overwriting: a name already taken by another file gets `-2`, `-3`... (`photo_files`).
- Provenance: beside each photo, PHOTO.json (device, its id, time, model version, why it was kept,
  the device's URL and sequence number, when it was pulled).
- Nothing the device says becomes a path unchecked: class and file names pass
  `photo_files.relative_photo`, checksums must be 64 hex digits."""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import EdgeclsError
from ..files import atomic_write_json
from ..photo_files import NameRefused, move_new, place_new, relative_photo
from .client import DeviceError, get_json, refusal, session, unreachable

STATE = ".edgecls-pull"
SUFFIXES = (".jpg", ".jpeg", ".png")
MAX_PHOTO = 64 << 20        # bytes: more than any camera frame; a device that claims more is refused
SHA = re.compile(r"[0-9a-f]{64}")


@dataclass
class PullResult:
    device: dict[str, Any] = field(default_factory=dict)
    fetched: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    skipped: int = 0               # already here (same checksum), or deleted here after an earlier pull
    refused: list[str] = field(default_factory=list)
    resumed: int = 0               # transfers continued with a Range request
    bytes: int = 0
    seconds: float = 0.0


class State:
    """What this dataset already has from one device (its collection id)."""

    def __init__(self, out: Path, device_id: str):
        self.path = out / STATE / f"{device_id}.json"
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
        self.since = int(doc.get("since", 0)) if isinstance(doc.get("since"), int) else 0
        self.files: dict[str, str] = doc.get("files") if isinstance(doc.get("files"), dict) else {}

    def save(self) -> None:
        atomic_write_json(self.path, {"since": self.since, "files": self.files})


def pull(url: str, out: Path, token: str | None, retries: int = 5, log: Callable[[str], None] = print) -> PullResult:
    """Bring the new photos of the device at `url` into `out` (see the module's notes)."""
    from ..outputs import output_lock
    from .client import device_url

    url = device_url(url)
    out = Path(out)
    with output_lock(out, "edgecls pull"):
        return asyncio.run(_pull(url, out, token, retries, log))


async def _pull(url: str, out: Path, token: str | None, retries: int, log) -> PullResult:
    result, start = PullResult(), time.perf_counter()
    async with session(token) as http:
        first = await _retrying(lambda: get_json(http, url, "/api/photos?since=0&limit=1"), retries, url, log)
        device = first.get("device") if isinstance(first, dict) else None
        if not isinstance(device, dict) or not re.fullmatch(r"[0-9a-f]{32}", str(device.get("id", ""))):
            raise DeviceError(f"{url}: the device's answer has no collection id; is it `edgecls serve --collect`?")
        result.device = device
        state = State(out, device["id"])
        while True:
            page = await _retrying(lambda: get_json(http, url, f"/api/photos?since={state.since}&limit=500"),
                                   retries, url, log)
            photos = page.get("photos") if isinstance(page, dict) else None
            if not isinstance(photos, list):
                raise DeviceError(f"{url}: the photo list is not a list")
            for photo in photos:
                await _one(http, url, out, state, photo, retries, result, log)
            if not photos or not page.get("more"):
                break
    result.seconds = time.perf_counter() - start
    return result


async def _one(http, url: str, out: Path, state: State, photo: Any, retries: int, result: PullResult, log) -> None:
    """Fetch, move or skip one listed photo; the state advances past it either way."""
    try:
        seq, (label, name), sha, size = _checked(photo)
    except NameRefused as exc:
        result.refused.append(str(exc))
        log(f"refused a photo the device listed: {exc}")
        if isinstance(photo, dict) and isinstance(photo.get("seq"), int):
            state.since = max(state.since, photo["seq"])
            state.save()
        return
    prov = photo.get("provenance") if isinstance(photo.get("provenance"), dict) else {}
    key = str(prov.get("photo_id") or sha)[:64]  # the device's id of the photo, kept through relabelling
    known = state.files.get(key)
    if known is not None:
        here = out / known
        if here.is_file() and here.parent.name != label:  # relabelled on the device: follow it
            moved = move_new(here, out / label)
            _move_sidecar(here, moved)
            state.files[key] = f"{label}/{moved.name}"
            result.moved.append(state.files[key])
        else:
            result.skipped += 1
    elif (out / label / name).is_file() and _sha256(out / label / name) == sha:
        state.files[key] = f"{label}/{name}"
        result.skipped += 1
    else:
        part = await _retrying(lambda: _download(http, url, out, seq, sha, size, result), retries, url, log)
        placed = place_new(part, out / label, name)
        doc = {**prov, "device_id": result.device["id"], "url": url, "seq": seq,
               "sha256": sha, "pulled": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        atomic_write_json(placed.with_name(placed.name + ".json"), doc)
        state.files[key] = f"{label}/{placed.name}"
        result.fetched.append(state.files[key])
        result.bytes += size
    state.since = max(state.since, seq)
    state.save()


def _checked(photo: Any) -> tuple[int, tuple[str, str], str, int]:
    if not isinstance(photo, dict):
        raise NameRefused("a listed photo is not an object")
    seq, sha, size = photo.get("seq"), photo.get("sha256"), photo.get("size")
    if not isinstance(seq, int) or seq < 1:
        raise NameRefused(f"photo {ascii(photo.get('file'))[:80]}: no sequence number")
    if not isinstance(sha, str) or not SHA.fullmatch(sha):
        raise NameRefused(f"photo {ascii(photo.get('file'))[:80]}: its checksum is not 64 hex digits")
    if not isinstance(size, int) or not 0 < size <= MAX_PHOTO:
        raise NameRefused(f"photo {ascii(photo.get('file'))[:80]}: size {ascii(size)[:20]} is not 1..{MAX_PHOTO} bytes")
    return seq, relative_photo(photo.get("file"), SUFFIXES), sha, size


async def _download(http, url: str, out: Path, seq: int, sha: str, size: int, result: PullResult) -> Path:
    """The photo into its part file, continuing one that a cut transfer left; checked by SHA-256."""
    part = out / STATE / "partial" / f"{sha}.part"
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        have = 0
    headers = {"Range": f"bytes={have}-"} if 0 < have < size else {}
    if have < size:
        async with http.get(f"{url}/api/photos/{seq}", headers=headers) as r:
            if r.status not in (200, 206):
                doc = await r.json(content_type=None) if r.content_type == "application/json" else None
                raise refusal(url, r.status, doc)
            if r.status == 200:
                have = 0  # the whole file again
            else:
                result.resumed += 1
            with open(part, "r+b" if have else "wb") as f:
                f.seek(have)
                f.truncate()
                async for chunk in r.content.iter_chunked(1 << 16):
                    have += len(chunk)
                    if have > size:
                        break
                    f.write(chunk)
    if have != size or _sha256(part) != sha:
        part.unlink(missing_ok=True)
        raise DeviceError(f"{url}: photo {seq} arrived with another size or checksum than listed; fetched again "
                          "on the next attempt")
    return part


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _move_sidecar(old: Path, new: Path) -> None:
    sidecar = old.with_name(old.name + ".json")
    if sidecar.is_file():
        sidecar.rename(new.with_name(new.name + ".json"))


async def _retrying(work: Callable[[], Any], retries: int, url: str, log) -> Any:
    """`work()` again after a lost connection (0.5, 1, 2... s apart, `retries` times); a refusal
    (401, 404...) is not retried."""
    import aiohttp

    for attempt in range(retries + 1):
        try:
            return await work()
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError) as exc:
            error: EdgeclsError = unreachable(url, exc)
        except DeviceError as exc:
            if "cannot reach" not in str(exc) and "arrived with" not in str(exc):
                raise
            error = exc
        if attempt == retries:
            raise DeviceError(f"{error}; gave up after {retries} retries: run the same pull again to resume")
        wait = 0.5 * 2 ** attempt
        log(f"{error}; retrying in {wait:g} s ({attempt + 1}/{retries})")
        await asyncio.sleep(wait)
