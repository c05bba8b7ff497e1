"""Device target profiles (``targets/<name>.toml``): suitable artifacts, engine options and
published reference latencies, each with its source."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import OptionError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    hardware: str
    artifacts: list[str]
    export: dict[str, str]
    input_size: tuple[int, int]
    engine: dict[str, Any]
    references: list[dict[str, Any]] = field(default_factory=list)

    def engine_options(self) -> dict[str, Any]:
        """Options for `open_engine` (zero threads means the engine's default)."""
        opts = {k: v for k, v in self.engine.items() if k != "name"}
        if not opts.get("num_threads"):
            opts.pop("num_threads", None)
        return opts


def _target_dir() -> Path:
    packaged = resources.files("edgecls") / "target_profiles"
    if packaged.is_dir() and any(Path(str(packaged)).glob("*.toml")):
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "targets"


def targets() -> dict[str, Target]:
    out = {}
    for path in sorted(_target_dir().glob("*.toml")):
        with open(path, "rb") as f:
            d = tomllib.load(f)
        out[d["name"]] = Target(
            name=d["name"], description=d.get("description", ""), hardware=d.get("hardware", ""),
            artifacts=list(d.get("artifacts", [])), export=dict(d.get("export", {})),
            input_size=tuple(d.get("input_size", (224, 224))), engine=dict(d.get("engine", {})),
            references=list(d.get("reference", [])),
        )
    return out


def get_target(name: str) -> Target:
    table = targets()
    if name not in table:
        raise OptionError(f"unknown target {name!r}; known targets: {', '.join(sorted(table))}")
    return table[name]
