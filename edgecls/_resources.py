"""Where the TOML tables (backbone recipes, target profiles) live."""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def table_dir(packaged: str, source: str) -> Path:
    """An installed wheel carries the tables as edgecls/<packaged>; a source checkout (and an
    editable install) reads them from the top-level <source>/ folder."""
    candidate = Path(str(resources.files("edgecls") / packaged))
    if candidate.is_dir() and any(candidate.glob("*.toml")):
        return candidate
    return Path(__file__).resolve().parent.parent / source
