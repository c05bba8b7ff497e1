"""Device target profiles (``targets/<name>.toml``): suitable artifacts, engine options per
engine and published reference latencies, each with its source."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._resources import table_dir
from .errors import OptionError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    hardware: str
    artifacts: list[str]                   # suitable "format:quant" artifacts, best first
    export: dict[str, str]
    engines: dict[str, dict[str, Any]]     # engine name -> options for `open_engine`
    references: list[dict[str, Any]] = field(default_factory=list)
    device_cpu: str = "unknown"            # the device's CPU class: x86-avx2, x86-vnni, arm, edgetpu
    int8_cpu: str = "portable"             # the CPU class its int8 exports are quantized for
    device: dict[str, str] = field(default_factory=dict)  # os, machine, python, glibc: what `deploy` builds for

    def engine_options(self, engine: str) -> dict[str, Any]:
        """Options for `open_engine` with `engine` (zero threads means the engine's default).

        A profile without a table for that engine is an error, not an empty set of options:
        the artifact would silently run unlike the target."""
        if engine not in self.engines:
            raise OptionError(
                f"target {self.name} has no options for the {engine} engine; it has options for "
                f"{', '.join(sorted(self.engines)) or 'no engine'} (suitable artifacts: {', '.join(self.artifacts)})"
            )
        opts = dict(self.engines[engine])
        if not opts.get("num_threads"):
            opts.pop("num_threads", None)
        return opts

    def suits(self, kind: str) -> bool:
        """Whether a "format:quant" artifact is among the profile's suitable ones."""
        return kind in self.artifacts

    def pip_platforms(self) -> list[str]:
        """pip's --platform tags for the device: every manylinux level its C library runs, newest
        first (pip does not widen a given tag to older glibc levels by itself)."""
        machine, glibc = self.device.get("machine"), self.device.get("glibc")
        if not machine or not glibc:
            return []
        return manylinux_tags(machine, glibc)


def manylinux_tags(machine: str, glibc: str) -> list[str]:
    """manylinux_2_N_<machine> for N from the glibc minor version down to 17, then manylinux2014."""
    try:
        major, minor = (int(v) for v in glibc.split(".")[:2])
    except ValueError:
        raise OptionError(f"glibc {glibc!r}: expected a version such as 2.36") from None
    if major != 2 or minor < 17:
        raise OptionError(f"glibc {glibc}: manylinux wheels need glibc 2.17 or newer")
    return [f"manylinux_2_{n}_{machine}" for n in range(minor, 16, -1)] + [f"manylinux2014_{machine}"]


def _load(path: Path) -> Target:
    with open(path, "rb") as f:
        d = tomllib.load(f)
    engines = d.get("engines", {})
    if "engine" in d or not isinstance(engines, dict) or not all(isinstance(v, dict) for v in engines.values()):
        raise OptionError(f"{path}: engine options go in one [engines.<engine>] table per engine "
                          "(litert, onnxruntime, openvino)")
    return Target(name=d["name"], description=d.get("description", ""), hardware=d.get("hardware", ""),
                  artifacts=list(d.get("artifacts", [])), export=dict(d.get("export", {})),
                  engines={k: dict(v) for k, v in engines.items()}, references=list(d.get("reference", [])),
                  device_cpu=str(d.get("device_cpu", "unknown")), int8_cpu=_int8_cpu(path, d),
                  device={k: str(v) for k, v in d.get("device", {}).items()})


def _int8_cpu(path: Path, d: dict) -> str:
    from .cpu import INT8_CPU_CLASSES

    value = d.get("int8_cpu", "portable")
    if value not in INT8_CPU_CLASSES:
        raise OptionError(f"{path}: int8_cpu {value!r}: expected one of {', '.join(INT8_CPU_CLASSES)}")
    return value


def targets() -> dict[str, Target]:
    """Every packaged target profile by name."""
    out = {}
    for path in sorted(table_dir("target_profiles", "targets").glob("*.toml")):
        target = _load(path)
        out[target.name] = target
    return out


def get_target(name: str) -> Target:
    """One target profile; an unknown name lists the known ones."""
    table = targets()
    if name not in table:
        raise OptionError(f"unknown target {name!r}; known targets: {', '.join(sorted(table))}")
    return table[name]


def artifact_kind(path: str | Path) -> str | None:
    """"format:quant" of an artifact from its manifest (None without one)."""
    from .manifest import load_manifest

    manifest = load_manifest(path)
    return f"{manifest.format}:{manifest.quantization}" if manifest else None


def engine_options_for(artifact: str | Path, target: str | None = None,
                       threads: int | None = None) -> tuple[dict[str, Any], list[str]]:
    """The engine options an artifact runs with under a target profile (and a thread override),
    and notes for the user. `stream` and `bench` both call this, so they run the same setup."""
    from .engines import engine_for

    engine = engine_for(artifact).name
    options: dict[str, Any] = {}
    notes: list[str] = []
    if target:
        profile = get_target(target)
        options = profile.engine_options(engine)
        kind = artifact_kind(artifact)
        if kind is not None and not profile.suits(kind):
            notes.append(f"{Path(artifact).name} is {kind}, not among target {profile.name}'s suitable artifacts "
                         f"({', '.join(profile.artifacts)})")
    if threads:
        options["num_threads"] = threads
    return options, notes
