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
from ..errors import DatasetError, ModelError, OptionError
from ..evaluate import agreement
from ..manifest import Manifest, atomic_write_text, load_manifest, sha256_file
from ..runtime import Classifier
from . import ExportSpec, resolve
from .context import ExportContext

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
                 max_accuracy_drop: float = 1.0, io_dtype: str | None = None, console=None) -> list[ArtifactReport]:
    """Convert, verify and gate. Returns one report per requested artifact."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    specs = resolve(formats, quants, {"io_dtype": io_dtype})  # before any slow work
    if calibration_count < 1:
        raise OptionError(f"calibration_count must be at least 1, got {calibration_count}")
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
    out_dir.mkdir(parents=True, exist_ok=True)
    preprocessing = manifest.preprocessing

    folder = data_mod.scan(dataset)
    if folder.classes != manifest.labels:
        raise DatasetError(f"{dataset}: classes {folder.classes} differ from the model's labels {manifest.labels}")
    split = data_mod.recorded_split(folder, manifest.source.get("split"))
    val = data_mod.load_images(folder, split["val"], preprocessing)
    calib_images = None
    if any(s.calibrated for s in specs):
        if calibration:
            calib_images = _calibration_from_dir(Path(calibration), preprocessing, calibration_count)
        else:
            train_targets = folder.targets[split["train"]]
            chosen = split["train"][data_mod.take_per_class(train_targets, calibration_count, seed=1)]
            calib_images = data_mod.load_images(folder, chosen, preprocessing).images

    from ..train import KerasScorer

    scorer = KerasScorer(model_path)
    reference = scorer.scores_resized(val.images)
    reference_acc = float(np.mean(reference.argmax(1) == val.targets))
    ctx = ExportContext(model_path, manifest, calib_images)
    ctx.keras_model = scorer.model
    console.print(f"verifying on {len(val.targets)} validation images; Keras accuracy {reference_acc:.4f}")

    reports: list[ArtifactReport] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("exporting", total=len(specs))
            for spec in specs:
                progress.update(task, description=f"exporting {spec.key}")
                report = _export_one(ctx, spec, out_dir, val, reference, reference_acc, max_accuracy_drop,
                                     {"io_dtype": io_dtype} if "io_dtype" in spec.options else {})
                reports.append(report)
                status = "ok" if report.passed else "FAILED"
                console.print(f"{spec.key:<18} {status}  " + (report.error or
                              f"accuracy {report.accuracy:.4f} ({0.0 - report.accuracy_drop_pp:+.2f} pp), "
                              f"agreement {report.top1_agreement:.4f}"))
                progress.advance(task)
    finally:
        ctx.cleanup()
    summary = {"model": str(model_path), "dataset": str(dataset), "max_accuracy_drop_pp": max_accuracy_drop,
               "reference_accuracy": reference_acc, "val_count": int(len(val.targets)),
               "artifacts": [asdict(r) for r in reports]}
    atomic_write_text(out_dir / "export_summary.json", json.dumps(summary, indent=2) + "\n")
    return reports


def _export_one(ctx: ExportContext, spec: ExportSpec, out_dir: Path, val, reference: np.ndarray,
                reference_acc: float, max_drop: float, options: dict[str, Any]) -> ArtifactReport:
    report = ArtifactReport(spec.key, spec.format, spec.quant, reference_accuracy=reference_acc)
    started = time.perf_counter()
    staging = Path(out_dir) / f".staging-{spec.format}-{spec.quant}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        base = ctx.manifest
        embedded = Manifest(format=spec.format, quantization=spec.quant, labels=base.labels,
                            preprocessing=base.preprocessing,
                            output={"activation": "softmax"}, source=_source(ctx))
        ctx.embedded_manifest = json.dumps(embedded.to_dict())
        staged = staging / spec.filename()
        try:
            import_module(f"{__package__}.{spec.module}").export(ctx, spec, staged, **options)
        except (OptionError, DatasetError):
            raise
        except Exception as exc:  # converters fail in many ways; report and go on with the rest
            report.error = f"conversion failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            report.notes["traceback"] = traceback.format_exc(limit=3)
            return report
        engine = open_engine(staged)
        classifier = Classifier(engine, base.labels, base.preprocessing, path=staged)
        probs = classifier.scores(val.images)
        accuracy = float(np.mean(probs.argmax(1) == val.targets))
        report.accuracy = accuracy
        report.accuracy_drop_pp = round((reference_acc - accuracy) * 100, 4)
        report.__dict__.update(agreement(reference, probs))
        report.size_bytes = sum(p.stat().st_size for p in staging.iterdir())
        if report.accuracy_drop_pp > max_drop:
            report.error = (f"accuracy gate failed: {accuracy:.4f} vs Keras {reference_acc:.4f} is a drop of "
                            f"{report.accuracy_drop_pp:.2f} pp, more than the allowed {max_drop:.2f} pp; "
                            "artifact not kept")
            return report
        manifest = Manifest(
            format=spec.format, quantization=spec.quant, labels=base.labels, preprocessing=base.preprocessing,
            input={**engine.input.to_dict(), "layout": classifier.layout},
            output={**engine.output.to_dict(), "activation": "softmax"},
            source=_source(ctx),
            verification={
                "split": "val", "count": int(len(val.targets)), "accuracy": accuracy,
                "reference_accuracy": reference_acc, "accuracy_drop_pp": report.accuracy_drop_pp,
                "top1_agreement": report.top1_agreement, "max_prob_diff": report.max_prob_diff,
                "max_accuracy_drop_pp": max_drop,
            },
        )
        final = Path(out_dir) / staged.name
        # Companion files (.bin) first, the model file last, its manifest after it.
        for companion in sorted(staging.iterdir(), key=lambda p: p.name == staged.name):
            companion.replace(Path(out_dir) / companion.name)
        manifest.artifact_sha256 = sha256_file(final)
        manifest.save(final)
        report.path, report.passed = str(final), True
        if spec.quant == "edgetpu":
            from .tflite import compile_edgetpu

            tpu = compile_edgetpu(final, Path(out_dir))
            report.notes["edgetpu"] = tpu
            compiled = Path(tpu.get("output", ""))
            if tpu.get("compiled") and compiled.is_file():
                # The compiled model gets its own manifest, so the runtime configures itself.
                manifest.artifact_sha256 = sha256_file(compiled)
                manifest.source["compiled_from"] = final.name
                manifest.save(compiled)
        return report
    finally:
        report.seconds = round(time.perf_counter() - started, 2)
        shutil.rmtree(staging, ignore_errors=True)


def _source(ctx: ExportContext) -> dict[str, Any]:
    return {"model": ctx.model_path.name, "model_sha256": ctx.manifest.artifact_sha256,
            "backbone": ctx.manifest.source.get("backbone"), "dataset": ctx.manifest.source.get("dataset"),
            "split": ctx.manifest.source.get("split")}
