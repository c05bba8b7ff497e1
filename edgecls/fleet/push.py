"""`edgecls push ARTIFACT URL...`: a verified model to one device or a few dozen on a LAN.

Each device gets the artifact through its own update route (`PUT /v2/models/NAME/artifact`) with
the manifest and the check images export stored: the device runs them, and its own checks, before
it swaps. One canary first, then waves (`--wave` devices at a time). The rollout stops at the first
refusal, unreachable device or failed health check (readiness, and the device serving the pushed
checksum, within `--health-timeout`), and every device already updated in this run is rolled back
(`POST .../rollback`, then checked to serve its old checksum again).

Exit codes: 0 every device serves the artifact (updated or already current); 1 the rollout stopped
and every device updated was rolled back; 3 the rollout stopped and a rollback failed (the table
says which device serves what); 2 bad input (the usual error line).

For more than a few dozen devices, or devices that are not always on: an existing fleet manager
with the deploy bundle (README "From camera to model")."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import OptionError
from .client import DeviceError, device_url, get_json, refusal, session, unreachable

FINAL_OK = ("updated", "already current")


@dataclass
class Row:
    url: str
    name: str = ""
    old: str = ""              # version and checksum before
    old_sha: str = ""
    new: str = ""
    checks: str = ""
    seconds: float = 0.0
    outcome: str = "not tried"
    detail: str = ""


@dataclass
class Upload:
    """The parts of one model update, read once."""

    sha256: str
    parts: list[tuple[str, str, bytes]] = field(default_factory=list)  # (part name, file name, bytes)

    def form(self) -> Any:
        import aiohttp

        form = aiohttp.FormData()
        for name, filename, data in self.parts:
            form.add_field(name, data, filename=filename, content_type="application/octet-stream")
        return form


def read_upload(artifact: Path) -> Upload:
    """The artifact, its manifest, OpenVINO weights, explain weights and stored check images."""
    from ..cam import cam_weights_path
    from ..errors import EdgeclsError
    from ..manifest import load_manifest, manifest_path

    artifact = Path(artifact)
    if not artifact.is_file():
        raise OptionError(f"{artifact}: model file not found")
    try:
        manifest = load_manifest(artifact)
    except EdgeclsError as exc:
        raise OptionError(f"{artifact}: its manifest is unusable: {exc}") from None
    if manifest is None or not manifest.artifact_sha256:
        raise OptionError(f"{artifact}: no manifest with the artifact's checksum beside it ({manifest_path(artifact)}); "
                          "push what `edgecls export` wrote")
    parts = [("artifact", artifact.name, artifact.read_bytes()),
             ("manifest", manifest_path(artifact).name, manifest_path(artifact).read_bytes())]
    if artifact.suffix == ".xml":
        for name in manifest.companions:
            parts.append(("weights", Path(name).name, (artifact.parent / name).read_bytes()))
    if cam_weights_path(artifact).is_file():
        parts.append(("cam", cam_weights_path(artifact).name, cam_weights_path(artifact).read_bytes()))
    for check in manifest.checks:
        image = artifact.parent / check["image"]
        if not image.is_file():
            raise OptionError(f"{image}: a check image the manifest lists is missing (copy the whole export folder)")
        parts.append(("check", Path(check["image"]).name, image.read_bytes()))  # the device matches the base name
    return Upload(manifest.artifact_sha256, parts)


def read_devices(urls: list[str], devices: Path | None) -> list[str]:
    """The device URLs: those given, then the file's (one a line; # comments), each once."""
    listed = list(urls)
    if devices is not None:
        try:
            lines = devices.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise OptionError(f"--devices {devices}: cannot read it ({exc})") from None
        listed += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    if not listed:
        raise OptionError("no device: give URLs or --devices FILE")
    try:
        found = [device_url(u) for u in listed]
    except DeviceError as exc:
        raise OptionError(str(exc)) from None
    twice = sorted({u for u in found if found.count(u) > 1})
    if twice:
        raise OptionError(f"listed more than once: {', '.join(twice)}")
    return found


def push(artifact: Path, urls: list[str], token: str | None, wave: int = 5, health_timeout: float = 20.0,
         log: Callable[[str], None] = print) -> tuple[list[Row], int]:
    """Roll `artifact` out (see the module's notes); the table's rows and the exit code."""
    upload = read_upload(artifact)
    return asyncio.run(_rollout(upload, urls, token, max(1, wave), health_timeout, log))


async def _rollout(upload: Upload, urls: list[str], token: str | None, wave: int, health_timeout: float,
                   log) -> tuple[list[Row], int]:
    rows = [Row(u) for u in urls]
    waves = [rows[:1]] + [rows[i : i + wave] for i in range(1, len(rows), wave)]
    async with session(token, read_timeout=120.0) as http:  # a device checks a model before it answers
        for n, group in enumerate(waves):
            log(("canary" if n == 0 else f"wave {n}") + ": " + ", ".join(r.url for r in group))
            await asyncio.gather(*(_update(http, upload, row, health_timeout) for row in group))
            if any(r.outcome not in FINAL_OK for r in group):
                break
        else:
            return rows, 0
        updated = [r for r in rows if r.outcome == "updated" or r.outcome == "unhealthy"]
        if updated:
            log("stopping the rollout; rolling back " + ", ".join(r.url for r in updated))
        await asyncio.gather(*(_rollback(http, row) for row in updated))
    return rows, 3 if any(r.outcome == "rollback failed" for r in rows) else 1


async def _status(http, url: str) -> tuple[str, str, str]:
    """(model name, version, checksum) that a device serves now."""
    doc = await get_json(http, url, "/api/status")
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise DeviceError(f"{url}: /api/status did not say which model it serves")
    if model.get("collect_only"):
        raise DeviceError(f"{url}: serves no model yet (collect mode); start it with a first model")
    return model["name"], str(model.get("version")), str(model.get("sha256", ""))


async def _update(http, upload: Upload, row: Row, health_timeout: float) -> None:
    start = time.perf_counter()
    try:
        row.name, version, row.old_sha = await _status(http, row.url)
        row.old = f"v{version} {row.old_sha[:8]}"
        if row.old_sha == upload.sha256:
            row.outcome, row.new = "already current", row.old
            return
        doc = await _put(http, row, upload)
        row.new = f"v{(doc.get('model') or {}).get('version')} {upload.sha256[:8]}"
        row.checks = _checks(doc.get("checks"))
        row.outcome = "unhealthy"  # updated; healthy once the checks below pass
        await _healthy(http, row, upload.sha256, health_timeout)
        row.outcome = "updated"
    except DeviceError as exc:
        row.detail = str(exc)
        if row.outcome != "unhealthy":  # updated but unhealthy stays so: it is rolled back
            row.outcome = "unreachable" if "cannot reach" in str(exc) else "refused"
    finally:
        row.seconds = time.perf_counter() - start


async def _put(http, row: Row, upload: Upload) -> dict:
    import aiohttp

    try:
        async with http.put(f"{row.url}/v2/models/{row.name}/artifact", data=upload.form()) as r:
            try:
                doc = await r.json(content_type=None)
            except ValueError:
                doc = None
            if r.status != 200 or not isinstance(doc, dict):
                if isinstance(doc, dict):
                    row.checks = _checks(doc.get("checks"))
                raise refusal(row.url, r.status, doc)
            return doc
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
        raise unreachable(row.url, exc) from None


def _checks(checks: Any) -> str:
    """The device's account of its checks, short: stored check images and agreement."""
    if not isinstance(checks, dict):
        return ""
    out = []
    if checks.get("stored"):
        out.append(str(checks["stored"]).split(";")[0])
    if isinstance(checks.get("agreement"), (int, float)):
        out.append(f"agreement {checks['agreement']:.2f} on {checks.get('references', '?')}")
    if checks.get("reason"):
        out.append(str(checks["reason"]))
    return "; ".join(out)[:160]


async def _healthy(http, row: Row, sha: str, timeout: float) -> None:
    """Ready, and serving `sha`, within `timeout` seconds."""
    import aiohttp

    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        try:
            async with http.get(f"{row.url}/v2/health/ready") as r:
                ready = r.status == 200
                last = "not ready" if not ready else last
            if ready:
                _, version, serving = await _status(http, row.url)
                if serving == sha:
                    return
                last = f"serves v{version} {serving[:8]}, not the pushed model"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, DeviceError) as exc:
            last = str(exc) or type(exc).__name__
        await asyncio.sleep(0.25)
    raise DeviceError(f"{row.url}: failed its health check after the update ({last} for {timeout:g} s)")


async def _rollback(http, row: Row) -> None:
    import aiohttp

    try:
        async with http.post(f"{row.url}/v2/models/{row.name}/rollback") as r:
            doc = await r.json(content_type=None) if r.status != 200 else None
            if r.status != 200:
                raise refusal(row.url, r.status, doc)
        _, version, serving = await _status(http, row.url)
        if serving != row.old_sha:
            raise DeviceError(f"{row.url}: after the rollback it serves v{version} {serving[:8]}, not {row.old}")
        row.outcome, row.new = "rolled back", f"v{version} {serving[:8]}"
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, DeviceError) as exc:
        row.outcome = "rollback failed"
        row.detail = f"{row.detail}; rollback: {exc}".strip("; ")
