"""Artifacts into a bundle: each with its manifest, companion files and check images, checked
against its checksums first. A foreign model (no manifest) gets one written into the bundle from
`--labels`, never beside the input, with the workstation's answers on `--check-image` photos."""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import ModelError, OptionError

# Names the installer handles without quoting (it lists artifacts in a shell variable).
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ENGINE_FORMATS = {"litert": "tflite", "onnxruntime": "onnx", "openvino": "openvino"}


@dataclass
class Staged:
    name: str
    engine: str
    kind: str
    files: list[str]                   # paths inside the bundle's artifacts/ folder
    bytes: int
    checks: int
    adopted: bool = False              # its manifest was written by deploy
    notes: list[str] = field(default_factory=list)


def check_names(paths: Sequence[Path]) -> None:
    """Artifact names the installer can list, found before any work is done."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            raise ModelError(f"{path}: is a folder, expected a model file (.tflite, .onnx, or an OpenVINO .xml)")
        if not path.is_file():
            raise ModelError(f"{path}: artifact not found")
        if not SAFE_NAME.match(path.name):
            raise OptionError(f"{path}: rename it to letters, digits and . _ + - only (the device's installer lists "
                              "artifacts by name)")
        if path.name in seen:
            raise OptionError(f"{path} and {seen[path.name]}: two artifacts named {path.name}; rename one")
        seen[path.name] = path


def stage(path: Path, dest: Path, labels: Path | None = None, check_images: Sequence[Path] = ()) -> Staged:
    """Copy one artifact and everything it needs into `dest` (the bundle's artifacts/ folder)."""
    from ..engines import engine_for
    from ..manifest import load_manifest, verify_checksums

    engine = engine_for(path).name
    manifest = load_manifest(path)
    if manifest is None:
        if labels is None:
            raise OptionError(f"{path}: no manifest ({path.name}.json); pass --labels FILE (and --check-image PHOTO "
                              "...) so that deploy writes one into the bundle")
        return _adopt(path, dest, engine, labels, check_images)
    verify_checksums(path, manifest)  # a modified artifact is refused here, not on the device
    names = [path.name, f"{path.name}.json", *manifest.companions, *(c["image"] for c in manifest.checks)]
    for name in names:
        source = path.parent / name
        if not source.is_file():
            raise ModelError(f"{source}: missing; the manifest {path.name}.json lists it")
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)
    staged = Staged(path.name, engine, f"{manifest.format}:{manifest.quantization}", names,
                    sum((dest / n).stat().st_size for n in names), len(manifest.checks))
    if manifest.checks and check_images:
        staged.notes.append(f"{path.name}: keeps the {len(manifest.checks)} check images stored at export; "
                            "--check-image is used only for artifacts without any")
    if not manifest.checks:
        if check_images:
            _add_checks(dest / path.name, check_images, staged)
        else:
            staged.notes.append(f"{path.name}: its manifest stores no check images, so the doctor can only confirm "
                                "that it opens; re-export it with this edgecls, or pass --check-image PHOTO")
    return staged


def _adopt(path: Path, dest: Path, engine: str, labels: Path, check_images: Sequence[Path]) -> Staged:
    """A manifest for a model edgecls did not export: labels given, the rest read from the model."""
    from ..files import sha256_file
    from ..manifest import Manifest
    from ..runtime import Classifier

    target = dest / path.name
    shutil.copy2(path, target)
    files = [path.name, f"{path.name}.json"]
    if path.suffix == ".xml":  # an OpenVINO IR's weights; the manifest records their checksum
        shutil.copy2(path.with_suffix(".bin"), dest / path.with_suffix(".bin").name)
        files.append(path.with_suffix(".bin").name)
    if path.suffix.lower() == ".onnx":  # external data (refused when outside the model's folder)
        from ..engines.onnx import check_external_data

        for location in check_external_data(path, path.read_bytes()):
            (dest / location).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path.parent / location, dest / location)
            files.append(Path(location).as_posix())
    clf = Classifier.from_artifact(target, labels=labels)
    info = clf.engine.input
    quantization = "int8" if info.quantized else "unknown"
    manifest = Manifest(format=ENGINE_FORMATS[engine], quantization=quantization, labels=clf.labels,
                        preprocessing=clf.preprocessing, input={**info.to_dict(), "layout": clf.layout},
                        output={**clf.engine.output.to_dict(), "activation": clf.output_activation},
                        source={"model": path.name, "manifest_by": "edgecls deploy --labels", "labels": labels.name},
                        artifact_sha256=sha256_file(target))
    staged = Staged(path.name, engine, f"{manifest.format}:{quantization}", files, 0, 0, adopted=True)
    if quantization == "unknown":
        staged.notes.append(f"{path.name}: a float model without a manifest; its precision (fp32, fp16) is not "
                            "recorded, so target suitability cannot be judged")
    manifest.save(target)
    if check_images:
        _add_checks(target, check_images, staged, clf)
    else:
        staged.notes.append(f"{path.name}: no --check-image given, so the doctor can only confirm that it opens")
    staged.bytes = sum((dest / n).stat().st_size for n in staged.files)
    return staged


def _add_checks(target: Path, images: Sequence[Path], staged: Staged, clf=None) -> None:
    """Store the given photos as check images of the bundled copy, with this machine's answers, and
    rewrite the bundled copy's manifest (the input's manifest is never touched)."""
    from ..check_images import write_checks
    from ..manifest import load_manifest
    from ..preprocess import read_rgb
    from ..runtime import Classifier

    clf = clf or Classifier.from_artifact(target)
    pictures = [clf.preprocessing.resize_image(read_rgb(p)) for p in images]
    entries, notes = write_checks(target, clf, pictures, select=False)
    manifest = load_manifest(target)
    manifest.checks = entries
    manifest.save(target)
    staged.files += [e["image"] for e in entries]
    staged.checks = len(entries)
    staged.notes += [f"{target.name}: {n}" for n in notes]
    staged.bytes = sum((target.parent / n).stat().st_size for n in staged.files)
