"""The CPU features that change int8 numerics, and the CPU classes an int8 export can be made for.

x86-64 without VNNI multiplies uint8 x int8 pairs with VPMADDUBSW, which saturates its int16
pair sums: an int8 model tuned on a VNNI machine can answer differently on an AVX2 laptop.
Arm NEON (with or without dot-product) accumulates in 32 bits and does not saturate. Ground
floor: standard library only.
"""
from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

# /proc/cpuinfo flag -> the name edgecls reports (x86 "flags", Arm "Features").
_FLAG_NAMES = {
    "avx2": "avx2", "avx512f": "avx512", "avx512_vnni": "vnni", "avx_vnni": "vnni", "amx_int8": "amx",
    "asimd": "neon", "neon": "neon", "asimddp": "dotprod", "i8mm": "i8mm",
}
FEATURE_NAMES = ("avx2", "avx512", "vnni", "amx", "neon", "dotprod", "i8mm")

# What an int8 export can be made for; "portable" is correct on every one of them.
INT8_CPU_CLASSES = {
    "portable": "any CPU: x86-64 with or without VNNI, Arm NEON (the default)",
    "x86-vnni": "x86-64 with AVX-512 VNNI or AVX-VNNI only (full 8-bit weights; saturates on older x86)",
    "x86-avx2": "x86-64 with AVX2, with or without VNNI",
    "arm": "Arm NEON CPUs (Raspberry Pi, phones); signed int8 activations",
}


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """Model name, architecture, int8-relevant ISA features and the CPU class of this machine.

    `EDGECLS_CPU_FEATURES` (comma list, e.g. "avx2") overrides detection, for a process run under an
    emulated CPU (qemu-user reports the host's /proc/cpuinfo but the emulated CPUID)."""
    machine = platform.machine().lower()
    text = _cpuinfo()
    model = platform.processor() or machine
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and value.strip():
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    features = sorted({_FLAG_NAMES[f] for f in flags if f in _FLAG_NAMES}, key=FEATURE_NAMES.index)
    if machine in ("arm64", "aarch64") and "neon" not in features:
        features.insert(0, "neon")  # NEON is mandatory on AArch64
    override = os.environ.get("EDGECLS_CPU_FEATURES")
    if override is not None:
        features = [f for f in FEATURE_NAMES if f in {s.strip() for s in override.split(",")}]
        model = f"{model} (features overridden by EDGECLS_CPU_FEATURES)"
    return {"model": model, "machine": machine, "features": features, "class": cpu_class(machine, features)}


def cpu_class(machine: str, features: list[str]) -> str:
    """x86-vnni, x86-avx2, x86 (older), arm or the machine name."""
    if machine in ("x86_64", "amd64", "i686", "i386"):
        if "vnni" in features:
            return "x86-vnni"
        return "x86-avx2" if "avx2" in features else "x86"
    if machine in ("arm64", "aarch64") or machine.startswith("arm"):
        return "arm"
    return machine or "unknown"


def saturation_risk(int8_cpu: str, device_class: str) -> bool:
    """Whether a model quantized for `int8_cpu` may saturate on a `device_class` CPU."""
    return int8_cpu == "x86-vnni" and device_class in ("x86-avx2", "x86", "unknown")
