"""The manifest that travels beside every artifact (``model.tflite`` -> ``model.tflite.json``).

It makes an artifact self-describing: labels, input and output tensors, preprocessing,
quantization, where it came from and how well it was verified.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import ModelError, OptionError
from .files import atomic_write_json, loads_strict, sha256_file
from .preprocess import Preprocessing

SCHEMA = "edgecls.manifest/1"


def manifest_path(artifact: str | Path) -> Path:
    """Where the manifest of an artifact lives."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


ACTIVATIONS = ("softmax", "sigmoid", "none")  # a model's final activation; "logits" is read as "none"
_HEX = set("0123456789abcdef")


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
    companions: dict[str, str] = field(default_factory=dict)  # file beside it -> sha256 (OpenVINO .bin, ONNX external data)
    # Check images (`edgecls.check_images`): {"image": path relative to the artifact's folder, "sha256",
    # "top1": the answer expected from the artifact, "probability"}; `edgecls doctor` runs them.
    checks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from datetime import datetime, timezone  # lazy: a cold `predict` never writes a manifest

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
            "companions": dict(self.companions),
            "verification": self.verification,
            "edgecls_version": self.edgecls_version,
            "created": self.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **({"checks": [dict(c) for c in self.checks]} if self.checks else {}),
        }

    @classmethod
    def from_dict(cls, d: Any, where: str = "<manifest>") -> "Manifest":
        """Validate a manifest document (types and ranges) and build it; ModelError names the field."""
        return _parse_manifest(d, where)

    def save(self, artifact: str | Path) -> Path:
        """Write the manifest beside `artifact`; the files it reads (an OpenVINO IR's weights, an ONNX
        model's external data) get their checksums too."""
        from .engines import companion_files

        artifact = Path(artifact)
        for companion in companion_files(artifact):
            if companion.is_file():
                self.companions[companion.name] = sha256_file(companion)
        if artifact.suffix.lower() == ".onnx" and artifact.is_file():
            from .engines.onnx import check_external_data

            for location in check_external_data(artifact, artifact.read_bytes()):
                self.companions[Path(location).as_posix()] = sha256_file(artifact.parent / location)
        path = manifest_path(artifact)
        atomic_write_json(path, self.to_dict())
        return path


class _Invalid(Exception):
    """One schema violation: (field path, what was expected)."""


def _fail(name: str, expected: str, value: Any) -> None:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    raise _Invalid(f"field {name!r} must be {expected}, got {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _str(d: dict, key: str, name: str, default: str | None = None, allowed: tuple[str, ...] | None = None,
         nonempty: bool = False) -> str:
    if key not in d or d[key] is None:
        if default is None:
            raise _Invalid(f"manifest lacks the field {name!r}")
        return default
    v = d[key]
    if not isinstance(v, str) or (nonempty and not v.strip()):
        _fail(name, "a non-empty string" if nonempty else "a string", v)
    if allowed is not None and v not in allowed:
        _fail(name, f"one of {', '.join(allowed)}", v)
    return v


def _table(d: dict, key: str, name: str) -> dict[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        _fail(name, "a JSON object", v)
    return dict(v)


def _numbers(v: Any, name: str, count: int, positive: bool = False) -> list[float]:
    if not isinstance(v, list) or len(v) != count or not all(_is_number(x) for x in v):
        _fail(name, f"a list of {count} finite numbers", v)
    if positive and not all(x > 0 for x in v):
        _fail(name, f"a list of {count} positive numbers", v)
    return [float(x) for x in v]


def _sha(v: Any, name: str) -> str:
    if v is None or v == "":
        return ""
    if not isinstance(v, str) or len(v) != 64 or not set(v) <= _HEX:
        _fail(name, "a sha256 hex digest (64 lowercase hex digits)", v)
    return v


def _tensor(t: dict[str, Any], name: str) -> None:
    shape = t.get("shape")
    if shape is not None and (not isinstance(shape, list) or not all(_is_int(x) and x >= -1 for x in shape)
                              or not 1 <= len(shape) <= 8):
        _fail(f"{name}.shape", "a list of 1 to 8 integers (-1 for a dynamic dimension)", shape)
    dtype = t.get("dtype")
    if dtype is not None and dtype not in ("float32", "float16", "uint8", "int8", "int16", "int32", "int64"):
        _fail(f"{name}.dtype", "a tensor type such as float32, uint8 or int8", dtype)
    q = t.get("quantization")
    if q is not None:
        if not isinstance(q, dict) or not _is_number(q.get("scale")) or q["scale"] < 0 \
                or not _is_int(q.get("zero_point")):
            _fail(f"{name}.quantization", "null or {scale: number >= 0, zero_point: integer}", q)


def _preprocessing(v: Any) -> Preprocessing:
    from .preprocess import INTERPOLATIONS, RESIZE_MODES

    if not isinstance(v, dict):
        _fail("preprocessing", "a JSON object", v)
    size = v.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(x) and 1 <= x <= 16384 for x in size):
        _fail("preprocessing.size", "[height, width], integers from 1 to 16384", size)
    scale = v.get("scale")
    if not _is_number(scale) or scale <= 0:
        _fail("preprocessing.scale", "a positive number", scale)
    _numbers(v.get("mean"), "preprocessing.mean", 3)
    _numbers(v.get("std"), "preprocessing.std", 3, positive=True)
    _str(v, "normalization", "preprocessing.normalization", default="custom")
    _str(v, "resize", "preprocessing.resize", default="stretch", allowed=RESIZE_MODES)
    # Manifests written before the field existed were made with an anti-aliased shrink: "area".
    _str(v, "interpolation", "preprocessing.interpolation", default="area", allowed=INTERPOLATIONS)
    _str(v, "channel_order", "preprocessing.channel_order", default="RGB", allowed=("RGB", "BGR"))
    crop = v.get("crop_fraction", 0.875)
    if not _is_number(crop) or not 0 < crop <= 1:
        _fail("preprocessing.crop_fraction", "a number in (0, 1]", crop)
    return Preprocessing.from_dict(v)


def _parse_manifest(d: Any, where: str) -> Manifest:
    if not isinstance(d, dict):
        raise ModelError(f"{where}: not an edgecls manifest (expected a JSON object, got {type(d).__name__})")
    if d.get("schema") != SCHEMA:
        raise ModelError(f"{where}: not an edgecls manifest (schema {d.get('schema')!r}, expected {SCHEMA!r})")
    try:
        labels = d.get("labels")
        if labels is None:
            raise _Invalid("manifest lacks the field 'labels'")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            _fail("labels", "a non-empty list of strings", labels)
        if "preprocessing" not in d:
            raise _Invalid("manifest lacks the field 'preprocessing'")
        tables = {key: _table(d, key, key) for key in ("input", "output", "source", "verification")}
        _tensor(tables["input"], "input")
        _tensor(tables["output"], "output")
        activation = tables["output"].get("activation")
        if activation == "logits":
            tables["output"]["activation"] = "none"
        elif activation is not None and activation not in ACTIVATIONS:
            _fail("output.activation", f"null or one of {', '.join(ACTIVATIONS)}", activation)
        for key in ("accuracy", "top1_agreement", "val_accuracy", "cv_accuracy", "train_accuracy", "reference_accuracy"):
            v = tables["verification"].get(key)
            if v is not None and (not _is_number(v) or not 0 <= v <= 1):
                _fail(f"verification.{key}", "null or a number from 0 to 1", v)
        split = tables["source"].get("split")
        if split is not None and not isinstance(split, dict):
            _fail("source.split", "null or a JSON object", split)
        companions = _table(d, "companions", "companions")
        for name, sha in companions.items():
            parts = name.split("/")
            if "\\" in name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                _fail("companions", "relative paths of files in the artifact's folder", name)
            _sha(sha, f"companions.{name}")
        checks = _checks(d.get("checks"), labels)
        return Manifest(
            format=_str(d, "format", "format", nonempty=True),
            quantization=_str(d, "quantization", "quantization", nonempty=True),
            labels=list(labels),
            preprocessing=_preprocessing(d["preprocessing"]),
            **tables,
            artifact_sha256=_sha(d.get("artifact_sha256"), "artifact_sha256"),
            edgecls_version=_str(d, "edgecls_version", "edgecls_version", default=""),
            created=_str(d, "created", "created", default=""),
            companions=companions,
            checks=checks,
        )
    except _Invalid as exc:
        raise ModelError(f"{where}: invalid manifest: {exc}") from None
    except OptionError as exc:
        raise ModelError(f"{where}: invalid manifest: {exc}") from None


def _checks(v: Any, labels: list[str]) -> list[dict[str, Any]]:
    """Check images: relative paths inside the artifact's folder, checksums, an answer among the labels."""
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(c, dict) for c in v):
        _fail("checks", "a list of objects", v)
    for i, c in enumerate(v):
        image = c.get("image")
        if not isinstance(image, str) or not image or image.startswith(("/", "\\")) or ".." in image.split("/"):
            _fail(f"checks[{i}].image", "a file path relative to the artifact's folder", image)
        if not _sha(c.get("sha256"), f"checks[{i}].sha256"):
            _fail(f"checks[{i}].sha256", "a sha256 hex digest", c.get("sha256"))
        if c.get("top1") not in labels:
            _fail(f"checks[{i}].top1", "one of the manifest's labels", c.get("top1"))
        p = c.get("probability")
        if p is not None and (not _is_number(p) or not 0 <= p <= 1):
            _fail(f"checks[{i}].probability", "null or a number from 0 to 1", p)
    return [dict(c) for c in v]


def verify_checksums(artifact: str | Path, manifest: Manifest) -> None:
    """Refuse an artifact (or a companion file such as OpenVINO's .bin) whose bytes differ from
    what its manifest recorded. Run before an engine opens the file: a modified model may not load."""
    artifact = Path(artifact)
    checks = [(artifact, manifest.artifact_sha256)] if manifest.artifact_sha256 else []
    checks += [(artifact.parent / name, sha) for name, sha in manifest.companions.items()]
    for path, expected in checks:
        if not path.is_file():
            raise ModelError(f"{path}: missing; the manifest {manifest_path(artifact).name} lists it with a checksum")
        if sha256_file(path) != expected:
            raise ModelError(
                f"{path}: the file does not match its manifest's checksum (replaced or modified after "
                f"export); re-export it or remove the stale manifest {manifest_path(artifact).name}"
            )


def load_manifest(artifact: str | Path) -> Manifest | None:
    """The manifest beside `artifact`, or None when there is none."""
    path = manifest_path(artifact)
    if not path.exists():
        return None
    try:
        data = loads_strict(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ModelError(f"{path}: manifest is not valid JSON ({exc})") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the manifest ({exc.strerror})") from None
    return Manifest.from_dict(data, str(path))


def read_labels(path: str | Path) -> list[str]:
    """Read a label file: one label per line. An `index label` or `index: label` prefix is
    stripped only when the lines are numbered 0, 1, ... N-1 throughout ("0 degrees", "90 degrees"
    are labels, not indexes). A UTF-8 byte order mark is not part of the first label."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: label file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ModelError(f"{path}: label file is not UTF-8 text, expected one label per line") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the label file ({exc.strerror})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ModelError(f"{path}: label file is empty, expected one label per line")
    numbered = [_numbered(line) for line in lines]
    if all(n is not None and n[0] == i for i, n in enumerate(numbered)):
        return [n[1] for n in numbered]  # type: ignore[index]
    return lines


def _numbered(line: str) -> tuple[int, str] | None:
    """(index, label) of a line `12 label` or `12: label`, else None."""
    digits = len(line) - len(line.lstrip("0123456789"))
    rest = line[digits:]
    if not digits or not (rest.startswith(":") or rest[:1].isspace()):
        return None
    label = rest.removeprefix(":").strip()
    return (int(line[:digits]), label) if label else None
