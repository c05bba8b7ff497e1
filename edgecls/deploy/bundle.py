"""Assemble an offline deploy bundle: artifacts, wheels, installer, checksums; written atomically as a
folder or a .tar.gz (a failed or killed build leaves only a `.building-*` folder, never a bundle).

    BUNDLE/
      install.sh   bundle.json   README.txt   SHA256SUMS
      artifacts/   model_int8.tflite, .json, .checks/ ...
      wheels/      edgecls and its runtime dependencies for the device
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__, checks
from ..errors import EdgeclsError, OptionError
from ..serve.unit import SERVICES
from .artifacts import check_names, stage
from .wheels import ENGINE_EXTRAS, Platform, Wheel, build_edgecls_wheel, download

SCHEMA = "edgecls.bundle/1"
_CAMERA = re.compile(r"^(\d+|/dev/video\d+|picamera2(:\d+)?)$")


@dataclass
class BundleRequest:
    artifacts: list[Path]
    target: str
    out: Path
    labels: Path | None = None
    check_images: list[Path] = field(default_factory=list)
    service: str | None = None            # serve | stream | None
    source: str | None = None             # the stream's (or server's) source
    port: int = 8080
    host: str = "127.0.0.1"               # the serve service's address; beyond loopback it needs token_file
    token_file: str | None = None         # the token's path ON THE DEVICE (never bundled, never on a command line)
    python: str | None = None             # overrides the target's Python (X.Y)
    platforms: list[str] = field(default_factory=list)  # override the target's pip platform tags
    find_links: Path | None = None        # fetch wheels from this folder only (an offline workstation)
    edgecls_wheel: Path | None = None     # a built edgecls wheel instead of building one from the checkout


def archive_mode(out: Path) -> bool:
    return out.name.endswith((".tar.gz", ".tgz"))


def machine_of(tag: str) -> str:
    """The machine of a platform tag: manylinux_2_17_aarch64 -> aarch64, manylinux2014_x86_64 -> x86_64."""
    parts = tag.split("_")
    return "_".join(parts[3:] if tag.startswith("manylinux_") else parts[1:])


def resolve_platform(request: BundleRequest) -> tuple[Platform, dict[str, str]]:
    """The platform to fetch wheels for and the device facts the installer checks."""
    from ..targets import get_target

    profile = get_target(request.target)
    device = dict(profile.device)
    python = request.python or device.get("python")
    tags = _widen(request.platforms) if request.platforms else profile.pip_platforms()
    if not python or not tags:
        raise OptionError(f"target {profile.name} names no device platform ([device] in its profile): pass "
                          "--platform TAG (such as manylinux_2_36_aarch64) and --python-version X.Y")
    if not re.fullmatch(r"3\.\d+", python):
        raise OptionError(f"--python-version {python!r}: expected a version such as 3.11")
    machines = {machine_of(t) for t in tags}
    if len(machines) != 1:
        raise OptionError(f"--platform tags name several machines ({', '.join(sorted(machines))}); give one machine's tags")
    device.update(python=python, machine=machines.pop())
    return Platform(tuple(tags), python), device


def _widen(tags: list[str]) -> list[str]:
    """A glibc 2.N system runs every manylinux level up to 2.N: add the older levels of each
    manylinux_2_N tag (pip does not), keeping the order given."""
    from ..targets import manylinux_tags

    out: list[str] = []
    for tag in tags:
        m = re.fullmatch(r"manylinux_2_(\d+)_(.+)", tag)
        for t in manylinux_tags(m.group(2), f"2.{m.group(1)}") if m and int(m.group(1)) >= 17 else [tag]:
            if t not in out:
                out.append(t)
    return out


def check_request(request: BundleRequest) -> None:
    """Everything that can be wrong with the request, found before any work is done."""
    check_names(request.artifacts)
    for image in request.check_images:
        if not image.is_file():
            raise OptionError(f"--check-image {image}: file not found")
    if request.labels is not None and not request.labels.is_file():
        raise OptionError(f"--labels {request.labels}: file not found")
    checks.one_of("service", request.service, SERVICES)
    if request.service == "stream" and not request.source:
        raise OptionError("--service stream needs --source (a camera index, picamera2, a URL or a folder)")
    checks.within("port", request.port, 1, 65535)
    for option, value in (("--source", request.source), ("--host", request.host), ("--token-file", request.token_file)):
        if value is not None and re.search(r"[\x00-\x1f\x7f]", value):
            raise OptionError(f"{option} {value!r}: holds a control character (a line break?); expected one line")
    _check_access(request)
    out = request.out.resolve()
    for path in request.artifacts:
        if out == path.resolve().parent or out in path.resolve().parents:
            raise OptionError(f"--out {request.out}: holds the artifact {path}; a bundle never replaces its inputs")
    from ..outputs import refuse_overlaps

    written = {"folders" if not archive_mode(request.out) else "files": {"--out": request.out}}
    refuse_overlaps({"labels": request.labels, "check image": request.check_images}, **written)
    _check_replaceable(request.out)


def _check_replaceable(out: Path) -> None:
    """An existing --out is replaced only when it is a bundle deploy wrote, unchanged since."""
    from .owned import not_ours

    if out.exists() or out.is_symlink():
        why = not_ours(out, SCHEMA, archive_mode(out))
        if why:
            raise OptionError(f"--out {out}: {why}; it is not an edgecls bundle as deploy wrote it, and is left as it "
                              "is: choose a new or empty folder (or remove it yourself)")


def build_bundle(request: BundleRequest, progress=lambda message: None) -> dict[str, Any]:
    """Build the bundle; returns its description (bundle.json, plus the sizes)."""
    check_request(request)
    platform, device = resolve_platform(request)
    staging = request.out.parent / f".{request.out.name}.building-{os.urandom(4).hex()}"
    root = staging / f"edgecls-bundle-{request.target}" if archive_mode(request.out) else staging
    try:
        (root / "artifacts").mkdir(parents=True)
        staged = []
        for path in request.artifacts:
            progress(f"artifact {path.name}")
            staged.append(stage(path, root / "artifacts", request.labels, request.check_images))
        # A serve service needs the server's libraries on the device too.
        extras = {"runtime"} | {ENGINE_EXTRAS[s.engine] for s in staged} | ({"serve"} if request.service == "serve" else set())
        wheel_dir = root / "wheels"
        if request.edgecls_wheel:
            wheel_dir.mkdir()
            own = Path(shutil.copy2(request.edgecls_wheel, wheel_dir / request.edgecls_wheel.name))
        else:
            progress("building the edgecls wheel from this checkout")
            own = build_edgecls_wheel(wheel_dir, request.find_links)
        progress(f"fetching wheels of edgecls[{','.join(sorted(extras))}] for {platform.tags[0]}, Python {platform.python}")
        wheels = download(own, sorted(extras), platform, wheel_dir, request.find_links)
        doc = _describe(request, staged, wheels, platform, device, sorted(extras), root)
        _write_installer(root, doc)
        _write_sums(root)
        doc["sizes"]["bundle_bytes"] = _finish(staging, root, request.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return doc


def _check_access(request: BundleRequest) -> None:
    """The serve service's address and token file, checked on the workstation: the device would
    only refuse to start (serve requires a token beyond loopback) after the bundle was installed."""
    from ..serve.config import is_loopback

    if request.service != "serve":
        if request.host != "127.0.0.1" or request.token_file:
            raise OptionError("--host and --token-file configure the serve service; add --service serve")
        return
    if request.token_file is not None and not request.token_file.startswith("/"):
        raise OptionError(f"--token-file {request.token_file!r}: expected an absolute path on the device "
                          "(for example /etc/edgecls/token), readable only by the service user")
    if not is_loopback(request.host) and not request.token_file:
        raise OptionError(f"--host {request.host}: serving beyond this device needs --token-file PATH (a file on the "
                          "device holding the access token; it is not put in the bundle)")


def _service(request: BundleRequest, artifact: str) -> dict[str, Any]:
    if not request.service:
        return {"kind": None, "artifact": artifact, "args": [], "camera": None}
    args = [request.source] if request.source else []
    if request.service == "serve":
        args += ["--port", str(request.port)]
        if request.host != "127.0.0.1":  # serve's own default
            args += ["--host", request.host]
        if request.token_file:
            args += ["--token-file", request.token_file]
    args += ["--target", request.target]
    camera = request.source if request.source and _CAMERA.match(request.source) else None
    return {"kind": request.service, "artifact": artifact, "args": args, "camera": camera}


def _describe(request, staged, wheels: list[Wheel], platform: Platform, device: dict, extras: list[str],
              root: Path) -> dict[str, Any]:
    service = _service(request, staged[0].name)
    digest = hashlib.sha256(json.dumps([sorted(_tree_sums(root).items()), service, device], sort_keys=True).encode())
    artifact_bytes = sum(s.bytes for s in staged)
    wheel_bytes = sum(w.bytes for w in wheels)
    own = next(w for w in wheels if w.name == "edgecls")
    return {
        "schema": SCHEMA, "id": digest.hexdigest()[:12], "edgecls": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "target": request.target,
        "device": device, "platforms": list(platform.tags),
        "requirement": f"edgecls[{','.join(extras)}]=={own.version}", "extras": extras,
        "artifacts": [asdict(s) for s in staged], "wheels": [asdict(w) for w in wheels], "service": service,
        "sizes": {"wheels_bytes": wheel_bytes, "artifacts_bytes": artifact_bytes,
                  "installed_bytes": sum(w.installed_bytes for w in wheels) + artifact_bytes},
    }


def _tree_sums(root: Path) -> dict[str, str]:
    from ..files import sha256_file

    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _write_installer(root: Path, doc: dict[str, Any]) -> None:
    from ..files import atomic_write_json, atomic_write_text

    # install.sh reads bundle.json as data, after checking SHA256SUMS: no shell file to source.
    shutil.copy2(Path(__file__).with_name("install.sh"), root / "install.sh")
    (root / "install.sh").chmod(0o755)
    atomic_write_json(root / "bundle.json", doc)
    atomic_write_text(root / "README.txt", _readme(doc))


def _readme(doc: dict[str, Any]) -> str:
    service = doc["service"]
    return (f"edgecls bundle {doc['id']} for {doc['target']} ({doc['device'].get('os', doc['device']['machine'])}, "
            f"Python {doc['device']['python']}), edgecls {doc['edgecls']}, made {doc['created']}.\n\n"
            f"Artifacts: {', '.join(a['name'] for a in doc['artifacts'])}\n"
            f"Service: {('edgecls ' + service['kind'] + ' ' + ' '.join(service['args'])) if service['kind'] else 'none'}\n\n"
            "Install on the device (no network needed; Python's venv module must be there):\n"
            "    sudo ./install.sh                 # into /opt/edgecls; ./install.sh --help for options\n"
            "It first checks this bundle (every file SHA256SUMS lists, and nothing it does not list: unpack\n"
            "each bundle into a new, empty folder), creates a virtual environment from exactly the listed\n"
            "wheels, copies artifacts/, runs `edgecls doctor`, and only then makes the release current; the\n"
            "previous one is kept, and brought back with its service unit by:\n"
            "    sudo /opt/edgecls/current/install.sh --rollback\n")


def _write_sums(root: Path) -> None:
    from ..files import atomic_write_text

    sums = _tree_sums(root)
    atomic_write_text(root / "SHA256SUMS", "".join(f"{h}  {name}\n" for name, h in sums.items()))


def _finish(staging: Path, root: Path, out: Path) -> int:
    """Move the finished bundle into place (replacing an older bundle there); its size in bytes."""
    if archive_mode(out):
        partial = staging / "bundle.tar.gz"
        with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
            tar.add(root, arcname=root.name)
        _check_replaceable(out)  # again: it may have changed while the bundle was built
        partial.replace(out)
        shutil.rmtree(staging)
        return out.stat().st_size
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    old = None
    _check_replaceable(out)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.urandom(4).hex()}")
        out.replace(old)
    try:
        staging.replace(out)
    except OSError:
        if old is not None:
            old.replace(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return size
