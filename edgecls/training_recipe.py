"""A training recipe: TrainConfig settings in a TOML file's `[train]` table (`edgecls tune` writes
one; `edgecls train --recipe` and `edgecls cv --recipe` read it)."""
from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import OptionError
from .files import atomic_write_text

RECIPE_TABLE = "train"


def config_fields() -> dict[str, Any]:
    """TrainConfig's fields by name."""
    from .train import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def save_recipe(config, path: str | Path, note: str = "") -> Path:
    """A training recipe TOML (`[train]` table of TrainConfig fields) for `edgecls train --recipe`."""
    lines = [f"# {note}" if note else "# edgecls training recipe", "# use with: edgecls train DATASET --recipe THIS_FILE",
             f"[{RECIPE_TABLE}]"]
    for k, v in dataclasses.asdict(config).items():
        if v is None or k in ("fold", "cache_dir", "workers"):
            continue
        lines.append(f"{k} = {_toml(v)}")
    path = Path(path)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return json.dumps(str(v))


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The `[train]` table of a recipe TOML, checked against TrainConfig's fields."""
    path = Path(path)
    if not path.is_file():
        raise OptionError(f"--recipe {path}: no such file")
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f).get(RECIPE_TABLE)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise OptionError(f"--recipe {path}: not valid TOML ({exc})") from None
    if not isinstance(table, dict):
        raise OptionError(f"--recipe {path}: no [{RECIPE_TABLE}] table")
    known = config_fields()
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise OptionError(f"--recipe {path}: unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "input_size" in table:
        size = table["input_size"]
        table["input_size"] = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    return table


def apply_recipe(config, recipe: dict[str, Any]):
    """`config` with the recipe's settings, except where `config` differs from TrainConfig's
    defaults (an option given on the command line wins over the recipe)."""
    from .train import TrainConfig

    default = TrainConfig()
    keep = {k for k in recipe if getattr(config, k) != getattr(default, k)}
    merged = dataclasses.replace(config, **{k: v for k, v in recipe.items() if k not in keep})
    merged.validate()
    return merged
