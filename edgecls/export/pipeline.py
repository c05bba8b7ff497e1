"""Export a trained `.keras` model to every requested (format, mode), verify each artifact through
the device runtime on the validation split, and keep only those that pass the accuracy gate."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import checks
from .. import data as data_mod
from ..cpu import cpu_info, saturation_risk
from ..errors import DatasetError, ModelError
from ..files import atomic_write_json
from ..manifest import Manifest, load_manifest
from ..outputs import output_lock, refuse_overlaps
from . import FORMATS, ExportSpec, resolve
from .artifact import ArtifactReport, export_one
from .context import ExportContext
from .verify import Gate, VerificationSet, choose_images

DEFAULT_CALIBRATION_COUNT = 300
DEFAULT_FORMAT, DEFAULT_QUANT = "tflite", "fp32"

__all__ = ["ArtifactReport", "DEFAULT_CALIBRATION_COUNT", "ExportRequest", "Gate", "check_request", "export_model"]


@dataclass(frozen=True)
class ExportRequest:
    """What one export run makes, its options checked."""

    specs: list[ExportSpec]
    gate: Gate
    int8_cpu: str                # the CPU class int8 artifacts are quantized for
    io_dtype: str | None = None
    explain: bool = False
    profile: Any = None          # the target profile (edgecls.targets.Target), when one was named
    fallback: bool = False       # a target's artifacts in its order until one passes the gate

    def options(self, spec: ExportSpec) -> dict[str, Any]:
        """The options `spec`'s exporter takes."""
        return {k: v for k, v in (("io_dtype", self.io_dtype), ("int8_cpu", self.int8_cpu)) if k in spec.options}


def check_request(formats: str | list[str] | None = None, quants: str | list[str] | None = None,
                  target: str | None = None, calibration_count: int = DEFAULT_CALIBRATION_COUNT,
                  max_accuracy_drop: float = 1.0, io_dtype: str | None = None, int8_cpu: str | None = None,
                  min_agreement: float | None = None, explain: bool = False, strict: bool = False) -> ExportRequest:
    """Resolve and check an export request before any slow work: formats and modes (default: the
    target's, else tflite:fp32), options, gate thresholds. A target without --format/--quant
    tries its suitable artifacts in its order and keeps the first that passes (`strict`: only its
    first, which must pass)."""
    profile, fallback = None, False
    if target:
        from ..targets import get_target

        profile = get_target(target)
        fallback = formats is None and quants is None and not strict
        formats = profile.export["format"] if formats is None else formats
        quants = profile.export["quant"] if quants is None else quants
    options = {"io_dtype": io_dtype, "int8_cpu": int8_cpu, "explain": True if explain else None}
    specs = resolve(DEFAULT_FORMAT if formats is None else formats, DEFAULT_QUANT if quants is None else quants,
                    options)
    if fallback:
        specs = _target_order(profile, specs, options)
    checks.at_least("calibration_count", calibration_count, 1)
    checks.within("max_accuracy_drop", max_accuracy_drop, 0, 100)
    checks.within("min_agreement", min_agreement, 0, 1)
    int8_cpu = int8_cpu or (profile.int8_cpu if profile is not None else None) or "portable"
    return ExportRequest(specs, Gate(max_accuracy_drop, min_agreement), int8_cpu, io_dtype, explain, profile, fallback)


def _target_order(profile, first: list[ExportSpec], options: dict[str, Any]) -> list[ExportSpec]:
    """The target's export first, then its other suitable artifacts in its order (those an
    option given for the first does not rule out)."""
    order = list(first)
    for key in profile.artifacts:
        fmt, quant = key.split(":")
        spec = FORMATS.get((fmt, quant))
        given = [name for name, value in options.items() if value is not None]
        if spec is not None and spec not in order and all(name in spec.options for name in given):
            order.append(spec)
    return order


def device_artifact(reports: list[ArtifactReport]) -> ArtifactReport | None:
    """The artifact a target's device should run: the first of its order that passed the gate."""
    return next((r for r in reports if r.passed), None)


def refusal_help(spec: ExportSpec, request: ExportRequest) -> str:
    """The options that could let a refused artifact pass, for its kind of failure."""
    if spec.calibrated:
        help_ = ("calibration photos closer to what the device sees (--calibration DIR, --calibration-count N), a "
                 "model fine-tuned on this data (edgecls train --fine-tune-epochs 5; its int8 keeps accuracy better), "
                 "or a larger --max-accuracy-drop")
        if spec.quant == "edgetpu":
            return help_ + "; the Edge TPU runs only full-integer models, so a float artifact is no way out there"
        others = [k for k in (request.profile.artifacts if request.profile else []) if k != spec.key]
        return help_ + (f"; or another artifact of the target: {', '.join(others)}" if others else "")
    return "a float artifact that loses accuracy points to a conversion problem: compare it with --format onnx, " \
           "or accept it with --max-accuracy-drop"


def _calibration_from_dir(path: Path, preprocessing, count: int, console=None) -> np.ndarray:
    """Images from a folder (flat, or an image-folder dataset sampled per class) for calibration;
    unreadable files are skipped and listed."""
    loaded = data_mod.load_calibration_folder(path, preprocessing, count, seed=1)
    if loaded.skipped:
        from ..console import make_console
        from rich.markup import escape

        (console or make_console(stderr=True)).print(escape("calibration: " + data_mod.skipped_summary(loaded.skipped)))
    return loaded.images


def _trained_model(model_path: Path, dataset: str | Path | None) -> tuple[Manifest, Path]:
    """The Keras model's manifest and the dataset it is verified on (default: its training set)."""
    if not model_path.is_file():
        raise ModelError(f"{model_path}: model file not found")
    manifest = load_manifest(model_path)
    if manifest is None or manifest.format != "keras":
        raise ModelError(f"{model_path}: needs the manifest written by `edgecls train` ({model_path.name}.json)")
    dataset = Path(dataset or manifest.source.get("dataset", ""))
    if not str(dataset) or not dataset.is_dir():
        raise DatasetError(f"{dataset}: dataset for verification not found; pass --dataset DIR")
    return manifest, dataset


def _verification_set(manifest: Manifest, dataset: Path, request: ExportRequest, calibration: str | Path | None,
                      calibration_count: int, console) -> VerificationSet:
    folder = data_mod.scan(dataset)
    if folder.classes != manifest.labels:
        raise DatasetError(f"{dataset}: classes {folder.classes} differ from the model's labels {manifest.labels}")
    split = data_mod.recorded_split(folder, manifest.source.get("split"))
    need_calibration = any(s.calibrated for s in request.specs)
    given = (_calibration_from_dir(Path(calibration), manifest.preprocessing, calibration_count, console)
             if calibration and need_calibration else None)
    return choose_images(folder, split, manifest.preprocessing, calibration_count, need_calibration, given)


def export_model(model_path: str | Path, formats: str | list[str] | None = None, quants: str | list[str] | None = None,
                 out_dir: str | Path | None = None, dataset: str | Path | None = None,
                 calibration: str | Path | None = None, calibration_count: int = DEFAULT_CALIBRATION_COUNT,
                 max_accuracy_drop: float = 1.0, io_dtype: str | None = None, console=None,
                 int8_cpu: str | None = None, min_agreement: float | None = None,
                 target: str | None = None, explain: bool = False, strict: bool = False) -> list[ArtifactReport]:
    """Convert, verify and gate. Returns one report per requested artifact.

    `formats`/`quants` default to the target's, else tflite/fp32. `int8_cpu` names the CPU
    class int8 artifacts are made for (`edgecls.cpu.INT8_CPU_CLASSES`; default: the target's,
    else "portable", correct on every CPU). `explain` adds the last feature map as a second
    output (TFLite and ONNX), so the device runtime can draw class activation maps."""
    from ..console import make_console
    from rich.markup import escape

    console = console or make_console(stderr=True)
    request = check_request(formats, quants, target, calibration_count, max_accuracy_drop, io_dtype, int8_cpu,
                            min_agreement, explain, strict)
    if request.profile is not None:
        console.print(escape(f"target {request.profile.name}: exporting " + (
            f"{request.specs[0].key}, then, if it is refused, {', '.join(s.key for s in request.specs[1:])} in "
            "this order until one passes" if request.fallback and len(request.specs) > 1 else
            ", ".join(spec.key for spec in request.specs))))
    model_path = Path(model_path)
    manifest, dataset = _trained_model(model_path, dataset)
    out_dir = Path(out_dir) if out_dir else model_path.parent / "export"
    refuse_overlaps({"dataset": dataset, "calibration": calibration}, folders={"--out": out_dir})
    with output_lock(out_dir, "edgecls export"):  # one export run per folder
        verify_set = _verification_set(manifest, dataset, request, calibration, calibration_count, console)
        return _export_verified(model_path, dataset, out_dir, request, verify_set, target, console)


def _export_verified(model_path: Path, dataset: Path, out_dir: Path, request: ExportRequest,
                     verify_set: VerificationSet, target: str | None, console) -> list[ArtifactReport]:
    """Score the verification images with the Keras model, then export, verify and gate each artifact."""
    from ..keras_model import KerasScorer

    scorer = KerasScorer(model_path)
    ctx = ExportContext(model_path, scorer.manifest, verify_set.calibration)
    ctx.keras_model = scorer.model
    reference = scorer.scores_resized(verify_set.images)
    summary = _summary_start(model_path, dataset, request, verify_set, reference, target, console)
    reports: list[ArtifactReport] = []
    try:
        _export_all(ctx, request, out_dir, verify_set, reference, reports, console)
    except BaseException as exc:
        summary["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise
    finally:
        ctx.cleanup()
        summary["artifacts"] = [asdict(r) for r in reports]
        if request.profile is not None:
            chosen = device_artifact(reports)
            summary["device_artifact"] = chosen.path if chosen else None
        atomic_write_json(out_dir / "export_summary.json", summary)
    return reports


def _summary_start(model_path: Path, dataset: Path, request: ExportRequest, verify_set: VerificationSet,
                   reference: np.ndarray, target: str | None, console) -> dict[str, Any]:
    """Say what the artifacts are verified on (and where int8 numerics were checked); the summary's start."""
    from rich.markup import escape

    host = cpu_info()
    int8 = any(s.quant in ("int8", "edgetpu", "mixed") for s in request.specs)
    notes = _cpu_notes(host, request.int8_cpu, request.profile) if int8 else []
    reference_acc = float(np.mean(reference.argmax(1) == verify_set.targets))
    console.print(escape(f"verifying on {verify_set.describe()}; Keras accuracy {reference_acc:.4f}; "
                         f"CPU {host['model']} ({host['class']}: {', '.join(host['features']) or 'no SIMD features'})"))
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    return {"model": str(model_path), "dataset": str(dataset), "max_accuracy_drop_pp": request.gate.max_accuracy_drop,
            "min_agreement": request.gate.min_agreement, "int8_cpu": request.int8_cpu, "target": target,
            "host_cpu": host, "notes": notes, "reference_accuracy": reference_acc,
            "verification_count": verify_set.count, "val_count": verify_set.val_count, "artifacts": []}


def _export_all(ctx: ExportContext, request: ExportRequest, out_dir: Path, verify_set: VerificationSet,
                reference: np.ndarray, reports: list[ArtifactReport], console) -> None:
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("exporting", total=len(request.specs))
        for spec in request.specs:
            if request.fallback and device_artifact(reports) is not None:
                break  # the target has its artifact: the rest of its order is not needed
            progress.update(task, description=f"exporting {spec.key}")
            report = export_one(ctx, spec, out_dir, verify_set, reference, request.gate, request.options(spec),
                                explain=request.explain and "explain" in spec.options)
            reports.append(report)
            status = "ok" if report.passed else "FAILED"
            console.print(escape(f"{spec.key:<18} {status}  " + (report.error or
                          f"accuracy {report.accuracy:.4f} ({0.0 - report.accuracy_drop_pp:+.2f} pp), "
                          f"agreement {report.top1_agreement:.4f} "
                          f"[{report.notes['agreement_ci95'][0]:.3f}, {report.notes['agreement_ci95'][1]:.3f}]")))
            if not report.passed and "gate failed" in (report.error or ""):
                console.print(escape(f"  what could help {spec.key}: {refusal_help(spec, request)}"))
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
