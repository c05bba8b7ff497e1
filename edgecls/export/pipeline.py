"""Export a trained `.keras` model to every requested (format, mode), verify each artifact through
the device runtime on the validation split, and keep only those that pass the accuracy gate."""
from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from ..engines import open_engine
from ..errors import DatasetError, ModelError, OptionError, stop_requested
from ..cam import cam_weights_path
from ..cpu import cpu_info, saturation_risk
from ..manifest import Manifest, atomic_write_json, load_manifest, manifest_path, sha256_file
from ..outputs import output_lock, refuse_overlaps
from ..runtime import Classifier
from . import ExportSpec, resolve
from .context import ExportContext
from .verify import choose_images, compare

DEFAULT_CALIBRATION_COUNT = 300


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


def _calibration_from_dir(path: Path, preprocessing, count: int, console=None) -> np.ndarray:
    """Images from a folder (flat, or an image-folder dataset sampled per class) for calibration;
    unreadable files are skipped and listed."""
    loaded = data_mod.load_calibration_folder(path, preprocessing, count, seed=1)
    if loaded.skipped:
        from rich.console import Console
        from rich.markup import escape

        (console or Console(stderr=True)).print(escape("calibration: " + data_mod.skipped_summary(loaded.skipped)))
    return loaded.images


def export_model(model_path: str | Path, formats: str | list[str] = "tflite", quants: str | list[str] = "fp32",
                 out_dir: str | Path | None = None, dataset: str | Path | None = None,
                 calibration: str | Path | None = None, calibration_count: int = DEFAULT_CALIBRATION_COUNT,
                 max_accuracy_drop: float = 1.0, io_dtype: str | None = None, console=None,
                 int8_cpu: str | None = None, min_agreement: float | None = None,
                 target: str | None = None, explain: bool = False) -> list[ArtifactReport]:
    """Convert, verify and gate. Returns one report per requested artifact.

    `int8_cpu` names the CPU class int8 artifacts are made for (`edgecls.cpu.INT8_CPU_CLASSES`;
    default: the target's, else "portable", correct on every CPU). `explain` adds the last
    feature map as a second output (TFLite and ONNX), so the device runtime can draw class
    activation maps."""
    from rich.console import Console

    console = console or Console(stderr=True)
    specs = resolve(formats, quants, {"io_dtype": io_dtype, "int8_cpu": int8_cpu,  # before any slow work
                                      "explain": True if explain else None})
    profile = None
    if target:
        from ..targets import get_target

        profile = get_target(target)
        int8_cpu = int8_cpu or profile.int8_cpu
    int8_cpu = int8_cpu or "portable"
    if calibration_count < 1:
        raise OptionError(f"calibration_count must be at least 1, got {calibration_count}")
    if not 0 <= max_accuracy_drop <= 100:
        raise OptionError(f"max_accuracy_drop must be within 0..100 points, got {max_accuracy_drop}")
    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise OptionError(f"min_agreement must be within 0..1, got {min_agreement}")
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: model file not found")
    manifest = load_manifest(model_path)
    if manifest is None or manifest.format != "keras":
        raise ModelError(f"{model_path}: needs the manifest written by `edgecls train` ({model_path.name}.json)")
    dataset = Path(dataset or manifest.source.get("dataset", ""))
    if not str(dataset) or not dataset.is_dir():
        raise DatasetError(f"{dataset}: dataset for verification not found; pass --dataset DIR")
    out_dir = Path(out_dir) if out_dir else model_path.parent / "export"
    refuse_overlaps({"dataset": dataset, "calibration": calibration}, folders={"--out": out_dir})
    with output_lock(out_dir, "edgecls export"):
        return _export_locked(model_path, manifest, dataset, out_dir, specs, calibration, calibration_count,
                              max_accuracy_drop, io_dtype, console, int8_cpu, min_agreement, target, explain, profile)


def _export_locked(model_path: Path, manifest: Manifest, dataset: Path, out_dir: Path, specs, calibration,
                   calibration_count: int, max_accuracy_drop: float, io_dtype: str | None, console,
                   int8_cpu: str, min_agreement: float | None, target: str | None, explain: bool,
                   profile) -> list[ArtifactReport]:
    from rich.markup import escape

    folder = data_mod.scan(dataset)
    if folder.classes != manifest.labels:
        raise DatasetError(f"{dataset}: classes {folder.classes} differ from the model's labels {manifest.labels}")
    split = data_mod.recorded_split(folder, manifest.source.get("split"))
    need_calibration = any(s.calibrated for s in specs)
    given = (_calibration_from_dir(Path(calibration), manifest.preprocessing, calibration_count, console)
             if calibration and need_calibration else None)
    verify_set = choose_images(folder, split, manifest.preprocessing, calibration_count, need_calibration, given)

    from ..train import KerasScorer

    scorer = KerasScorer(model_path)
    reference = scorer.scores_resized(verify_set.images)
    ctx = ExportContext(model_path, manifest, verify_set.calibration)
    ctx.keras_model = scorer.model
    host = cpu_info()
    notes = _cpu_notes(host, int8_cpu, profile) if any(s.quant in ("int8", "edgetpu") for s in specs) else []
    reference_acc = float(np.mean(reference.argmax(1) == verify_set.targets))
    console.print(escape(f"verifying on {verify_set.describe()}; Keras accuracy {reference_acc:.4f}; "
                         f"CPU {host['model']} ({host['class']}: {', '.join(host['features']) or 'no SIMD features'})"))
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    gate = Gate(max_accuracy_drop, min_agreement)
    reports: list[ArtifactReport] = []
    summary = {"model": str(model_path), "dataset": str(dataset), "max_accuracy_drop_pp": max_accuracy_drop,
               "min_agreement": min_agreement, "int8_cpu": int8_cpu, "target": target, "host_cpu": host,
               "notes": notes, "reference_accuracy": reference_acc, "verification_count": verify_set.count,
               "val_count": verify_set.val_count, "artifacts": []}
    try:
        _export_all(ctx, specs, out_dir, verify_set, reference, gate, io_dtype, int8_cpu, explain, reports, console)
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise
    finally:
        ctx.cleanup()
        summary["artifacts"] = [asdict(r) for r in reports]
        atomic_write_json(out_dir / "export_summary.json", summary)
    return reports


@dataclass(frozen=True)
class Gate:
    max_accuracy_drop: float            # points, on the verification set
    min_agreement: float | None = None  # top-1 agreement with the Keras model

    def failure(self, stats: dict) -> str | None:
        if stats["accuracy_drop_pp"] > self.max_accuracy_drop:
            return (f"accuracy gate failed: {stats['accuracy']:.4f} vs Keras {stats['reference_accuracy']:.4f} "
                    f"on {stats['count']} images is a drop of {stats['accuracy_drop_pp']:.2f} pp, more than the "
                    f"allowed {self.max_accuracy_drop:.2f} pp")
        if self.min_agreement is not None and stats["top1_agreement"] < self.min_agreement:
            return (f"agreement gate failed: top-1 agreement {stats['top1_agreement']:.4f} on {stats['count']} images "
                    f"is below the required {self.min_agreement:.4f}")
        return None


def _export_all(ctx, specs, out_dir, verify_set, reference, gate, io_dtype, int8_cpu, explain, reports,
                console) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("exporting", total=len(specs))
        for spec in specs:
            progress.update(task, description=f"exporting {spec.key}")
            options = {k: v for k, v in (("io_dtype", io_dtype), ("int8_cpu", int8_cpu)) if k in spec.options}
            report = _export_one(ctx, spec, out_dir, verify_set, reference, gate, options,
                                 explain=explain and "explain" in spec.options)
            reports.append(report)
            status = "ok" if report.passed else "FAILED"
            console.print(escape(f"{spec.key:<18} {status}  " + (report.error or
                          f"accuracy {report.accuracy:.4f} ({0.0 - report.accuracy_drop_pp:+.2f} pp), "
                          f"agreement {report.top1_agreement:.4f} "
                          f"[{report.notes['agreement_ci95'][0]:.3f}, {report.notes['agreement_ci95'][1]:.3f}]")))
            progress.advance(task)


def _cpu_notes(host: dict, int8_cpu: str, profile) -> list[str]:
    """What the summary must say about where int8 numerics were checked and where they will run."""
    notes = []
    device = profile.device_cpu if profile is not None else None
    if host["class"] == "x86-vnni" and device in (None, "x86-avx2", "x86"):
        where = f"the {profile.name} device ({device})" if profile else "devices"
        notes.append(f"verified on a VNNI host; {where} may lack VNNI, where uint8 x int8 products can saturate. "
                     + ("int8 artifacts are quantized for 'x86-vnni' (full 8-bit weights) and may answer differently "
                        "there: use --int8-cpu portable" if saturation_risk(int8_cpu, device or "unknown") else
                        f"int8 artifacts are quantized for '{int8_cpu}' (7-bit weights where an engine's kernels "
                        "could saturate), so they compute the same there"))
    if device and device != host["class"] and device != "edgetpu":
        notes.append(f"verification ran on {host['class']}, the target device is {device}: run `edgecls bench "
                     "--dataset` on the device to confirm")
    return notes


def _export_one(ctx: ExportContext, spec: ExportSpec, out_dir: Path, verify_set, reference: np.ndarray,
                gate: Gate, options: dict[str, Any], explain: bool = False) -> ArtifactReport:
    report = ArtifactReport(spec.key, spec.format, spec.quant)
    started = time.perf_counter()
    staging = Path(out_dir) / f".staging-{spec.format}-{spec.quant}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    final = Path(out_dir) / spec.filename()
    judged = False  # True once this run's artifact was verified (then an earlier one must go)
    try:
        base = ctx.manifest
        ctx.quantization_scheme = None
        embedded = Manifest(format=spec.format, quantization=spec.quant, labels=base.labels,
                            preprocessing=base.preprocessing,
                            output={"activation": "softmax"}, source=_source(ctx))
        ctx.embedded_manifest = json.dumps(embedded.to_dict())
        staged = staging / spec.filename()
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
            return report
        judged = True
        engine = open_engine(staged)
        classifier = Classifier(engine, base.labels, base.preprocessing, path=staged, activation="softmax")
        try:
            probs = classifier.scores(verify_set.images)
        except ModelError as exc:  # non-finite outputs (an fp16 overflow, say): this artifact fails
            report.error = f"verification failed: {exc}; artifact not kept"
            return report
        stats = compare(reference, probs, verify_set.targets, verify_set.val_count)
        report.accuracy, report.reference_accuracy = stats["accuracy"], stats["reference_accuracy"]
        report.accuracy_drop_pp, report.top1_agreement = stats["accuracy_drop_pp"], stats["top1_agreement"]
        report.max_prob_diff = stats["max_prob_diff"]
        report.notes.update({k: stats[k] for k in ("count", "val_count", "agreement_ci95", "disagreements",
                                                   "val_accuracy", "val_reference_accuracy")})
        if ctx.quantization_scheme:
            report.notes["quantization_scheme"] = ctx.quantization_scheme
        report.size_bytes = sum(p.stat().st_size for p in staging.iterdir())
        failure = gate.failure(stats)
        if failure:
            report.error = failure + "; artifact not kept"
            return report
        manifest = Manifest(
            format=spec.format, quantization=spec.quant, labels=base.labels, preprocessing=base.preprocessing,
            input={**engine.input.to_dict(), "layout": classifier.layout},
            output={**engine.output.to_dict(), "activation": "softmax"},
            source={**_source(ctx), **({"quantization_scheme": ctx.quantization_scheme}
                                       if ctx.quantization_scheme else {})},
            verification={"split": "val" if stats["count"] == stats["val_count"] else "val+uncalibrated-train",
                          **stats, "max_accuracy_drop_pp": gate.max_accuracy_drop,
                          "min_agreement": gate.min_agreement, "cpu": cpu_info()},
        )
        engine = classifier = None  # release the staged file before it moves (Windows keeps it open)
        _remove_artifact(final)
        # Companion files (.bin) first, the model file last, its manifest after it.
        for companion in sorted(staging.iterdir(), key=lambda p: p.name == staged.name):
            companion.replace(Path(out_dir) / companion.name)
        manifest.artifact_sha256 = sha256_file(final)
        cam = cam_weights_path(final)
        if explain and cam.is_file():
            manifest.companions[cam.name] = sha256_file(cam)
            manifest.output["explain"] = "cam"
        manifest.save(final)
        report.path, report.passed = str(final), True
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
            removed = _remove_artifact(final)
            if removed:
                report.notes["removed"] = removed
                report.error = (report.error or "not kept") + f"; removed the earlier {', '.join(removed)}"


def _verified_export_of(final: Path, ctx: ExportContext) -> bool:
    """Whether `final` is an intact artifact exported (and gated) from the model being exported now."""
    from ..manifest import verify_checksums

    try:
        manifest = load_manifest(final)
        if manifest is None or not manifest.artifact_sha256 or not ctx.manifest.artifact_sha256:
            return False
        verify_checksums(final, manifest)
    except ModelError:
        return False
    return manifest.source.get("model_sha256") == ctx.manifest.artifact_sha256


def _remove_artifact(final: Path) -> list[str]:
    """Delete an artifact, its manifest, weights and compiled Edge TPU build; the names removed."""
    names = [final, manifest_path(final), cam_weights_path(final)]
    if final.suffix == ".xml":
        names.append(final.with_suffix(".bin"))
    if final.suffix == ".tflite":
        compiled = final.with_name(final.stem + "_edgetpu.tflite")
        names += [compiled, manifest_path(compiled)]
    removed = []
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
