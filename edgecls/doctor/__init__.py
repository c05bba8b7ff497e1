"""`edgecls doctor`: whether this machine can run the given artifacts, and what to do where not.

Each check yields findings: ok, info (a fact), warn (worth fixing, not needed for what was asked)
or fail (needed, and broken). The doctor passes when nothing failed. Part of the light runtime:
numpy, OpenCV and the engines only, each imported by the check that needs it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

SCHEMA = "edgecls.doctor/1"
STATUSES = ("ok", "info", "warn", "fail")


@dataclass
class Finding:
    section: str          # system, resources, engines, delegates, cameras, or the artifact's name
    name: str
    status: str           # one of STATUSES
    detail: str
    fix: str = ""         # what to do, for warn and fail
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Request:
    """What the doctor is asked to confirm."""

    artifacts: list[Path] = field(default_factory=list)
    target: Any = None                 # a targets.Target, or None
    camera: str | None = None          # a camera the service needs: index, /dev/videoN, picamera2[:N]
    sweep: bool = True                 # time each artifact at several thread counts


def diagnose(artifacts: Sequence[str | Path] = (), target: str | None = None, camera: str | None = None,
             sweep: bool = True) -> dict[str, Any]:
    """Run every check; returns the report document (schema edgecls.doctor/1)."""
    from datetime import datetime, timezone

    from .. import __version__
    from ..provenance import device_provenance
    from . import accel, artifacts as artifact_checks, cameras, system

    profile = None
    if target:
        from ..targets import get_target

        profile = get_target(target)
    request = Request([Path(a) for a in artifacts], profile, camera, sweep)
    findings: list[Finding] = []
    findings += system.check(request)
    findings += accel.check(request)
    findings += cameras.check(request)
    for path in request.artifacts:
        findings += artifact_checks.check(path, request)
    return {"schema": SCHEMA, "ok": not any(f.status == "fail" for f in findings),
            "edgecls": __version__, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "target": profile.name if profile else None, "device": device_provenance(),
            "findings": [asdict(f) for f in findings]}


def save_last(report: dict[str, Any]) -> Path | None:
    """Keep the report as `<cache>/doctor/last.json` for a later look (None when the cache is not writable)."""
    import json

    from ..cache import cache_root
    from ..files import atomic_write_text

    path = cache_root() / "doctor" / "last.json"
    try:
        atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    except OSError:
        return None
    return path
