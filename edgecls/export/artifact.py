"""One (format, mode) of an export run: convert into a private staging folder, verify through the
device runtime, and keep the artifact (companion files, then the model, its manifest last) only
when it passes the gate; otherwise nothing of that name is left behind."""
from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from ..cam import cam_weights_path
from ..check_images import checks_dir, write_checks
from ..cpu import cpu_info
from ..engines import companion_files, open_engine
from ..errors import DatasetError, ModelError, OptionError, stop_requested
from ..files import sha256_file
from ..manifest import Manifest, load_manifest, manifest_path, verify_checksums
from ..runtime import Classifier
from . import ExportSpec
from .context import ExportContext
from .verify import Gate, VerificationSet, compare


@dataclass
class ArtifactReport:
    key: str
    format: str
    quant: str
    path: str | None = None
    passed: bool = False
    size_bytes: int = 0
    accuracy: float | None = None
    reference_accuracy: float | None = None
    accuracy_drop_pp: float | None = None
    top1_agreement: float | None = None
    max_prob_diff: float | None = None
    seconds: float = 0.0
    error: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def export_one(ctx: ExportContext, spec: ExportSpec, out_dir: Path, verify_set: VerificationSet,
               reference: np.ndarray, gate: Gate, options: dict[str, Any], explain: bool = False) -> ArtifactReport:
    """Convert, verify and (when it passes `gate`) keep one artifact; its report."""
    report = ArtifactReport(spec.key, spec.format, spec.quant)
    started = time.perf_counter()
    staging = Path(out_dir) / f".staging-{spec.format}-{spec.quant}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    final = Path(out_dir) / spec.filename()
    judged = False  # True once this run's artifact was verified (then an earlier one must go)
    try:
        staged = staging / spec.filename()
        if not _convert(ctx, spec, staged, options, explain, report):
            return report
        judged = True
        manifest = _verify(ctx, spec, staged, verify_set, reference, gate, report)
        if manifest is not None:
            _keep(staged, final, manifest, explain, report)
            if spec.quant == "edgetpu":
                _compile_edgetpu(final, manifest, report)
        return report
    finally:
        report.seconds = round(time.perf_counter() - started, 2)
        shutil.rmtree(staging, ignore_errors=True)
        if not report.passed and not judged and _verified_export_of(final, ctx):
            # The conversion failed before judging anything (a full disk, a converter error): an
            # earlier artifact that passed its gate for this very model stays.
            report.error = (report.error or "not kept") + f"; kept the earlier {final.name}, a verified export of this model"
        elif not report.passed:
            # A stale artifact of the same name from an earlier run must not pass for this one.
            removed = remove_artifact(final)
            if removed:
                report.notes["removed"] = removed
                report.error = (report.error or "not kept") + f"; removed the earlier {', '.join(removed)}"


def _convert(ctx: ExportContext, spec: ExportSpec, staged: Path, options: dict[str, Any], explain: bool,
             report: ArtifactReport) -> bool:
    """Run the format's exporter into `staged`; False (with the error in `report`) when it failed."""
    base = ctx.manifest
    ctx.quantization_scheme = None
    embedded = Manifest(format=spec.format, quantization=spec.quant, labels=base.labels,
                        preprocessing=base.preprocessing, output={"activation": "softmax"}, source=_source(ctx))
    ctx.embedded_manifest = json.dumps(embedded.to_dict())
    try:
        ctx.explain_model = _explain_variant(ctx, staged, spec.format) if explain else None
        import_module(f"{__package__}.{spec.module}").export(ctx, spec, staged, **options)
    except (OptionError, DatasetError):
        raise
    except Exception as exc:  # converters fail in many ways; report and go on with the rest
        if stop_requested():  # a SIGTERM the converter turned into another error
            raise KeyboardInterrupt from exc
        report.error = f"conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report.notes["traceback"] = traceback.format_exc(limit=3)
        return False
    return True


def _verify(ctx: ExportContext, spec: ExportSpec, staged: Path, verify_set: VerificationSet, reference: np.ndarray,
            gate: Gate, report: ArtifactReport) -> Manifest | None:
    """Score the staged artifact through the runtime against the Keras model; its manifest when
    it passes the gate, else None (the failure in `report`)."""
    base = ctx.manifest
    engine = open_engine(staged)
    classifier = Classifier(engine, base.labels, base.preprocessing, path=staged, activation="softmax")
    try:
        started = time.perf_counter()
        probs = classifier.scores(verify_set.images)
        # What it costs on this host, said beside the artifact a target falls back to (pipeline.py).
        report.notes["ms_per_image"] = round((time.perf_counter() - started) * 1000 / max(1, len(verify_set.images)), 2)
    except ModelError as exc:  # non-finite outputs (an fp16 overflow, NaN weights): this artifact fails
        report.error = f"verification failed: {exc}; artifact not kept"
        return None
    stats = compare(reference, probs, verify_set.targets, verify_set.val_count)
    report.accuracy, report.reference_accuracy = stats["accuracy"], stats["reference_accuracy"]
    report.accuracy_drop_pp, report.top1_agreement = stats["accuracy_drop_pp"], stats["top1_agreement"]
    report.max_prob_diff = stats["max_prob_diff"]
    report.notes.update({k: stats[k] for k in ("count", "val_count", "agreement_ci95", "disagreements",
                                               "val_accuracy", "val_reference_accuracy")})
    if ctx.quantization_scheme:
        report.notes["quantization_scheme"] = ctx.quantization_scheme
    report.size_bytes = sum(p.stat().st_size for p in staged.parent.iterdir())
    failure = gate.failure(stats)
    if failure:
        report.error = failure + "; artifact not kept"
        return None
    checks = _check_images(staged, classifier, verify_set, reference, probs, report)
    scheme = {"quantization_scheme": ctx.quantization_scheme} if ctx.quantization_scheme else {}
    return Manifest(
        format=spec.format, quantization=spec.quant, labels=base.labels, preprocessing=base.preprocessing,
        input={**engine.input.to_dict(), "layout": classifier.layout},
        output={**engine.output.to_dict(), "activation": "softmax"},
        source={**_source(ctx), **scheme},
        verification={"split": "val" if stats["count"] == stats["val_count"] else "val+uncalibrated-train",
                      **stats, "max_accuracy_drop_pp": gate.max_accuracy_drop,
                      "min_agreement": gate.min_agreement, "cpu": cpu_info()},
        checks=checks,
    )


def _check_images(staged: Path, classifier: Classifier, verify_set: VerificationSet, reference: np.ndarray,
                  probs: np.ndarray, report: ArtifactReport) -> list[dict[str, Any]]:
    """A few verification images that the artifact and the Keras model both get right by a wide
    margin, stored beside the artifact with its answers (`edgecls doctor` runs them on a device)."""
    right = np.flatnonzero((probs.argmax(1) == verify_set.targets) & (reference.argmax(1) == verify_set.targets))
    top2 = np.sort(probs[right], axis=1)[:, -2:] if len(right) else np.zeros((0, 2))
    candidates = right[np.argsort(-(top2[:, 1] - top2[:, 0]), kind="stable")][:12]
    labels = classifier.labels
    checks, notes = write_checks(staged, classifier, [verify_set.images[i] for i in candidates],
                                 [labels[int(verify_set.targets[i])] for i in candidates])
    if notes:
        report.notes["checks"] = notes
    return checks


def _keep(staged: Path, final: Path, manifest: Manifest, explain: bool, report: ArtifactReport) -> None:
    """Move the staged files into place, the model file last, and write its manifest after it."""
    remove_artifact(final)
    # Companion files (.bin, CAM weights) first, the model file last, its manifest after it.
    for path in sorted(staged.parent.iterdir(), key=lambda p: p.name == staged.name):
        path.replace(final.parent / path.name)
    manifest.artifact_sha256 = sha256_file(final)
    cam = cam_weights_path(final)
    if explain and cam.is_file():
        manifest.companions[cam.name] = sha256_file(cam)
        manifest.output["explain"] = "cam"
    manifest.save(final)
    report.path, report.passed = str(final), True


def _verified_export_of(final: Path, ctx: ExportContext) -> bool:
    """Whether `final` is an intact artifact exported (and gated) from the model being exported now."""
    try:
        manifest = load_manifest(final)
        if manifest is None or not manifest.artifact_sha256 or not ctx.manifest.artifact_sha256:
            return False
        verify_checksums(final, manifest)
    except ModelError:
        return False
    return manifest.source.get("model_sha256") == ctx.manifest.artifact_sha256


def remove_artifact(final: Path) -> list[str]:
    """Delete an artifact, its manifest, companion files, CAM weights, check images and compiled
    Edge TPU build; the names removed."""
    removed = []
    if checks_dir(final).is_dir():
        shutil.rmtree(checks_dir(final))
        removed.append(checks_dir(final).name)
    names = [final, manifest_path(final), cam_weights_path(final), *companion_files(final)]
    if final.suffix == ".tflite":
        compiled = final.with_name(final.stem + "_edgetpu.tflite")
        names += [compiled, manifest_path(compiled)]
    for path in names:
        if path.exists() or path.is_symlink():
            path.unlink()
            removed.append(path.name)
    return removed


def _explain_variant(ctx: ExportContext, staged: Path, fmt: str):
    """The two-output model for `fmt` (built once per run); its CAM weights are written beside `staged`."""
    from ..cam import save_cam_weights
    from ..explain import cam_kernel, export_explain_model

    if fmt in ctx.explain_models:
        save_cam_weights(staged, cam_kernel(ctx.keras_model))
        return ctx.explain_models[fmt]
    model = export_explain_model(ctx.keras_model, staged, fmt)
    h, w = ctx.input_size
    model(np.zeros((1, h, w, 3), np.float32))  # Keras' ONNX exporter needs a model that has been called
    ctx.explain_models[fmt] = model
    return model


def _compile_edgetpu(final: Path, manifest: Manifest, report: ArtifactReport) -> None:
    from .tflite import compile_edgetpu

    tpu = compile_edgetpu(final, final.parent)
    report.notes["edgetpu"] = tpu
    compiled = Path(tpu.get("output", ""))
    if tpu.get("compiled") and compiled.is_file():
        # The compiled model gets its own manifest, so the runtime configures itself.
        manifest.artifact_sha256 = sha256_file(compiled)
        manifest.source["compiled_from"] = final.name
        manifest.save(compiled)


def _source(ctx: ExportContext) -> dict[str, Any]:
    return {"model": ctx.model_path.name, "model_sha256": ctx.manifest.artifact_sha256,
            "backbone": ctx.manifest.source.get("backbone"), "dataset": ctx.manifest.source.get("dataset"),
            "split": ctx.manifest.source.get("split")}
