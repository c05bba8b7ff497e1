"""The machine: Python, OS, C library, architecture and CPU class, board, memory, disk, the cache
folder, temperature and throttling."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import sys
from pathlib import Path

from . import Finding, Request

from ..provenance import emulated

MB = 1024 * 1024


def check(request: Request) -> list[Finding]:
    """Every system finding, in the order a person reads them."""
    return [_python(request), _os(), _cpu(request), _board(), *_memory(request), *_disk(request),
            _cache(), *_thermal()]


def _python(request: Request) -> Finding:
    version = platform.python_version()
    data = {"version": version, "executable": sys.executable}
    want = (request.target.device.get("python") if request.target else None) or ""
    if want and not version.startswith(want + "."):
        return Finding("system", "python", "warn", f"Python {version}; target {request.target.name} expects {want}",
                       f"the bundle's wheels are built for Python {want}: run edgecls with that Python, "
                       "or build a bundle with --python-version " + ".".join(version.split(".")[:2]), data)
    return Finding("system", "python", "ok", f"Python {version} ({sys.executable})", data=data)


def _os() -> Finding:
    libc, libc_version = platform.libc_ver()
    pretty = _os_release() or f"{platform.system()} {platform.release()}"
    data = {"os": pretty, "kernel": platform.release(), "libc": f"{libc} {libc_version}".strip()}
    return Finding("system", "os", "info", f"{pretty}; kernel {platform.release()}; "
                   f"{libc or 'C library'} {libc_version or 'unknown'}", data=data)


def _os_release() -> str | None:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return None


def arm_hwcaps() -> list[str] | None:
    """The Arm features the kernel (or an emulator) reports to programs, as edgecls names them;
    None off AArch64. This is what XNNPACK and onnxruntime dispatch on."""
    if platform.machine().lower() not in ("aarch64", "arm64"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype, libc.getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        hwcap, hwcap2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
    except (OSError, AttributeError):
        return None
    bits = {"neon": hwcap >> 1, "dotprod": hwcap >> 20, "sve": hwcap >> 22, "i8mm": hwcap2 >> 13}
    return [name for name, value in bits.items() if value & 1]


def _cpu(request: Request) -> Finding:
    from ..cpu import cpu_info

    cpu = cpu_info()
    data = {**cpu, "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "emulated": emulated(), "hwcaps": arm_hwcaps()}
    features = data["hwcaps"] if data["hwcaps"] is not None else cpu["features"]
    model = "emulated Arm CPU" if data["emulated"] else cpu["model"]
    detail = (f"{platform.machine()}, {model}, class {cpu['class']} "
              f"({', '.join(features) or 'no SIMD features read'}), {data['cpus']} CPUs")
    if data["emulated"]:
        detail += ("; runs under an emulator (qemu-user: /proc/cpuinfo shows the host's CPU, the features above "
                   "are the emulated core's HWCAP): timings mean nothing")
    device = request.target.device if request.target else {}
    if device.get("machine") and device["machine"] != platform.machine().lower():
        return Finding("system", "cpu", "fail", detail + f"; target {request.target.name} is {device['machine']}",
                       f"artifacts and wheels for {request.target.name} are built for {device['machine']}: "
                       f"use a bundle built for this machine ({platform.machine()})", data)
    if request.target and request.target.device_cpu not in ("unknown", "edgetpu") \
            and request.target.device_cpu != cpu["class"] and not data["emulated"]:
        return Finding("system", "cpu", "warn", detail + f"; target {request.target.name} expects "
                       f"{request.target.device_cpu}", "int8 artifacts were quantized for the target's CPU class: "
                       "check their answers here with the check images below, or export with --int8-cpu portable", data)
    return Finding("system", "cpu", "info", detail, data=data)


def _board() -> Finding:
    from ..provenance import device_model

    model = device_model()
    return Finding("system", "board", "info", model or "not reported (no device tree or DMI name)",
                   data={"model": model})


def _meminfo() -> dict[str, int]:
    out = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, value = line.partition(":")
            parts = value.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return out


def _memory(request: Request) -> list[Finding]:
    info = _meminfo()
    if "MemAvailable" not in info:
        return [Finding("resources", "memory", "info", "not reported (/proc/meminfo unreadable)")]
    available, total = info["MemAvailable"], info.get("MemTotal", 0)
    models = sum(p.stat().st_size for p in request.artifacts if p.is_file())
    # An engine holds about one copy of the model plus activations; three copies leave room for both.
    need = max(100 * MB, 3 * models)
    detail = f"{available / MB:.0f} MB available of {total / MB:.0f} MB"
    data = {"available_bytes": available, "total_bytes": total, "needed_bytes": need}
    if available < need:
        return [Finding("resources", "memory", "fail", detail + f"; the artifacts need about {need / MB:.0f} MB",
                        "stop other programs, or deploy a smaller artifact (int8 is a quarter of fp32)", data)]
    if available < 256 * MB:
        return [Finding("resources", "memory", "warn", detail, "little memory left: a camera stream and the "
                        "system page cache compete for it; stop programs the device does not need", data)]
    return [Finding("resources", "memory", "ok", detail, data=data)]


def _disk(request: Request) -> list[Finding]:
    from ..cache import cache_root

    places = {p.resolve().parent for p in request.artifacts if p.exists()} or {Path.cwd()}
    places.add(_existing_parent(cache_root()))
    findings = []
    for place in sorted(places):
        try:
            free = shutil.disk_usage(place).free
        except OSError as exc:
            findings.append(Finding("resources", "disk", "warn", f"cannot read free space at {place} ({exc.strerror})"))
            continue
        detail, data = f"{free / MB:,.0f} MB free at {place}", {"path": str(place), "free_bytes": free}
        if free < 50 * MB:
            findings.append(Finding("resources", "disk", "fail", detail, "free space: remove old logs, "
                                    "recordings (--save) or releases; a full disk stops writes and updates", data))
        elif free < 500 * MB:
            findings.append(Finding("resources", "disk", "warn", detail, "under 500 MB free: an update "
                                    "(a new bundle needs ~250 MB installed) may not fit", data))
        else:
            findings.append(Finding("resources", "disk", "ok", detail, data=data))
    return findings


def _existing_parent(path: Path) -> Path:
    path = path.expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cache() -> Finding:
    """The cache folder must take a file: edgecls keeps its caches and the doctor's last report there."""
    from ..cache import cache_root

    root = cache_root()
    probe = root / f".doctor-probe-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return Finding("resources", "cache", "fail", f"{root} is not writable ({reason})",
                       f"point EDGECLS_CACHE at a writable folder (such as /var/cache/edgecls owned by the service "
                       f"user), or fix the owner of {root}", {"path": str(root), "error": reason})
    return Finding("resources", "cache", "ok", f"{root} is writable", data={"path": str(root)})


def _thermal() -> list[Finding]:
    from ..provenance import thermal_state

    state = thermal_state()
    findings = []
    temp = state["temperature_c"]
    if temp is None:
        findings.append(Finding("resources", "temperature", "info", "not reported by this machine", data=state))
    elif temp >= 80:
        findings.append(Finding("resources", "temperature", "warn", f"{temp:.1f} °C ({state['temperature_source']})",
                                "near the throttling point (80-85 °C on a Raspberry Pi): add a heatsink or fan",
                                state))
    else:
        findings.append(Finding("resources", "temperature", "ok", f"{temp:.1f} °C ({state['temperature_source']})",
                                data=state))
    flags = state["throttled"]
    if flags is None:
        findings.append(Finding("resources", "throttling", "info", "no firmware throttling flags on this machine"))
    elif flags["now"] or flags["since_boot"]:
        findings.append(Finding("resources", "throttling", "warn",
                                f"{flags['raw']}: now {', '.join(flags['now']) or 'none'}; since boot "
                                f"{', '.join(flags['since_boot']) or 'none'} ({flags['source']})",
                                "under-voltage: use a 5 V 3 A (Pi 4) or 5 A (Pi 5) supply and a short cable; "
                                "throttling or temperature limit: cool the board. Latencies measured meanwhile "
                                "are slower than the device can do", flags))
    else:
        findings.append(Finding("resources", "throttling", "ok", f"{flags['raw']}: never throttled since boot",
                                data=flags))
    return findings
