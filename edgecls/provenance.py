"""Where a figure was measured: the device's model, its temperature, throttling and clock, and the
engine versions installed. Standard library only (part of the light runtime); every reading that
the machine does not offer is None, never a guess.

Raspberry Pi firmware flags (`vcgencmd get_throttled`, also in sysfs on Raspberry Pi OS kernels):
bits 0-3 say what holds now, bits 16-19 what has happened since boot.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

THROTTLE_BITS = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}
_THROTTLED_SYSFS = ("/sys/devices/platform/soc/soc:firmware/get_throttled",
                    "/sys/devices/platform/soc/soc:firmware/raspberrypi-hwmon/get_throttled")
# Engine name -> the distributions that provide it, first found wins.
ENGINE_DISTRIBUTIONS = {"litert": ("ai-edge-litert", "tflite-runtime"), "onnxruntime": ("onnxruntime",),
                        "openvino": ("openvino",)}


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def emulated() -> bool:
    """Whether this process runs under a user-mode emulator: an Arm process that sees an x86 host's
    /proc/cpuinfo (qemu-user passes the host's through)."""
    import platform

    if not platform.machine().lower().startswith(("arm", "aarch64")):
        return False
    text = _read("/proc/cpuinfo") or ""
    return any(vendor in text for vendor in ("GenuineIntel", "AuthenticAMD"))


def device_model() -> str | None:
    """The board's name from the device tree (Raspberry Pi, Jetson), else the DMI product name."""
    for path in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        model = _read(path)
        if model:
            return model
    vendor, product = _read("/sys/class/dmi/id/sys_vendor"), _read("/sys/class/dmi/id/product_name")
    return " ".join(p for p in (vendor, product) if p) or None


def _vcgencmd(*args: str) -> str | None:
    exe = shutil.which("vcgencmd")
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def temperature_c() -> tuple[float | None, str | None]:
    """The SoC or CPU package temperature and where it was read."""
    zones = sorted(Path("/sys/class/thermal").glob("thermal_zone*"))
    preferred = ("cpu", "soc", "x86_pkg", "package", "core")
    for zone in sorted(zones, key=lambda z: not any(k in (_read(z / "type") or "").lower() for k in preferred)):
        try:
            millidegrees = int(_read(zone / "temp"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if -40_000 < millidegrees < 150_000:  # a zone without a sensor reports nonsense such as -274000
            return millidegrees / 1000.0, f"{zone}/temp ({_read(zone / 'type') or 'unnamed'})"
    out = _vcgencmd("measure_temp")  # temp=48.3'C
    if out and "=" in out:
        try:
            return float(out.split("=", 1)[1].rstrip("'C")), "vcgencmd measure_temp"
        except ValueError:
            pass
    return None, None


def throttle_flags() -> dict[str, Any] | None:
    """The Raspberry Pi firmware's throttling word, decoded; None where the device has none."""
    raw, source = None, None
    for path in _THROTTLED_SYSFS:
        raw, source = _read(path), path
        if raw:
            break
    if not raw:
        out = _vcgencmd("get_throttled")  # throttled=0x50000
        raw, source = (out.split("=", 1)[1], "vcgencmd get_throttled") if out and "=" in out else (None, None)
    if not raw:
        return None
    try:
        return decode_throttled(int(raw, 16), source)
    except ValueError:
        return None


def decode_throttled(word: int, source: str | None = None) -> dict[str, Any]:
    """The firmware's throttling word as names: what holds now, what happened since boot."""
    return {"raw": hex(word), "source": source,
            "now": [name for bit, name in THROTTLE_BITS.items() if word >> bit & 1],
            "since_boot": [name for bit, name in THROTTLE_BITS.items() if word >> (bit + 16) & 1]}


def cpu_clock_mhz() -> dict[str, float] | None:
    """Current and maximum clock of CPU 0 (cpufreq); a current clock below the maximum under load
    means the governor or the firmware slowed it."""
    base = Path("/sys/devices/system/cpu/cpu0/cpufreq")
    cur, top = _read(base / "scaling_cur_freq"), _read(base / "cpuinfo_max_freq")
    try:
        return {"current": int(cur) / 1000.0, "max": int(top) / 1000.0}
    except (TypeError, ValueError):
        return None


def thermal_state() -> dict[str, Any]:
    """Temperature, firmware throttling flags and CPU clock at this moment."""
    temp, where = temperature_c()
    return {"temperature_c": temp, "temperature_source": where, "throttled": throttle_flags(),
            "cpu_mhz": cpu_clock_mhz()}


def throttled_during(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """Why a run between two thermal states was slowed by the firmware, or None when nothing says so."""
    reasons = []
    for when, state in (("before", before), ("after", after)):
        flags = (state or {}).get("throttled") or {}
        if flags.get("now"):
            reasons.append(f"{', '.join(flags['now'])} {when} the run")
    old = set(((before or {}).get("throttled") or {}).get("since_boot", []))
    new = [f for f in ((after or {}).get("throttled") or {}).get("since_boot", []) if f not in old]
    if new:
        reasons.append(f"{', '.join(new)} began during the run")
    return "; ".join(reasons) or None


def engine_versions() -> dict[str, str | None]:
    """Installed version of each engine's distribution (None: not installed), without importing it."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for engine, dists in ENGINE_DISTRIBUTIONS.items():
        found[engine] = None
        for dist in dists:
            try:
                found[engine] = f"{dist} {version(dist)}"
                break
            except PackageNotFoundError:
                continue
    return found


def device_provenance() -> dict[str, Any]:
    """The device facts a portable benchmark report carries (thermal states are added around the run)."""
    from .cpu import cpu_info

    cpu = cpu_info()
    return {"model": device_model(), "cpu": cpu["model"], "cpu_class": cpu["class"], "machine": cpu["machine"],
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "emulated": emulated(), "engines": engine_versions()}
