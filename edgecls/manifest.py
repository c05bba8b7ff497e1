"""The manifest that travels beside every artifact (``model.tflite`` -> ``model.tflite.json``).

It makes an artifact self-describing: labels, input and output tensors, preprocessing,
quantization, where it came from and how well it was verified.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelError
from .preprocess import Preprocessing

SCHEMA = "edgecls.manifest/1"


def manifest_path(artifact: str | Path) -> Path:
    """Where the manifest of an artifact lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model file is read by others
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@dataclass
class Manifest:
    """Everything a runtime needs to use an artifact correctly."""

    format: str
    quantization: str
    labels: list[str]
    preprocessing: Preprocessing
    input: dict[str, Any] = field(default_factory=dict)   # name, shape, dtype, layout, quantization
    output: dict[str, Any] = field(default_factory=dict)  # name, shape, dtype, quantization, activation
    source: dict[str, Any] = field(default_factory=dict)  # model file name, sha256, backbone, split
    artifact_sha256: str = ""
    verification: dict[str, Any] = field(default_factory=dict)
    edgecls_version: str = __version__
    created: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "format": self.format,
            "quantization": self.quantization,
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.to_dict(),
            "input": self.input,
            "output": self.output,
            "source": self.source,
            "artifact_sha256": self.artifact_sha256,
            "verification": self.verification,
            "edgecls_version": self.edgecls_version,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "<manifest>") -> "Manifest":
        if d.get("schema") != SCHEMA:
            raise ModelError(f"{where}: not an edgecls manifest (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        try:
            return cls(
                format=d["format"],
                quantization=d["quantization"],
                labels=[str(x) for x in d["labels"]],
                preprocessing=Preprocessing.from_dict(d["preprocessing"]),
                input=dict(d.get("input", {})),
                output=dict(d.get("output", {})),
                source=dict(d.get("source", {})),
                artifact_sha256=d.get("artifact_sha256", ""),
                verification=dict(d.get("verification", {})),
                edgecls_version=d.get("edgecls_version", ""),
                created=d.get("created", ""),
            )
        except KeyError as exc:
            raise ModelError(f"{where}: manifest lacks the field {exc.args[0]!r}") from None

    def save(self, artifact: str | Path) -> Path:
        path = manifest_path(artifact)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load_manifest(artifact: str | Path) -> Manifest | None:
    """The manifest beside `artifact`, or None when there is none."""
    path = manifest_path(artifact)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: manifest is not valid JSON ({exc})") from None
    return Manifest.from_dict(data, str(path))


def read_labels(path: str | Path) -> list[str]:
    """Read a label file: one label per line (a `index label` or `index: label` prefix is stripped)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: label file not found")
    labels = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.partition(" ")
        if rest and head.rstrip(":").isdigit():
            line = rest.strip()
        labels.append(line)
    if not labels:
        raise ModelError(f"{path}: label file is empty, expected one label per line")
    return labels
