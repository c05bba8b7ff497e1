"""Device target profiles (``targets/<name>.toml``): suitable artifacts, engine options and
published reference latencies, each with its source."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from typing import Any

from ._resources import table_dir
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


def targets() -> dict[str, Target]:
    out = {}
    for path in sorted(table_dir("target_profiles", "targets").glob("*.toml")):
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
