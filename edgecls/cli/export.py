"""`edgecls export`: convert a trained model to every asked format, verified and gated."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..cpu import INT8_CPU_CLASSES
from ..export import FORMATS, IO_DTYPES
from .common import command, err, escape, folder_option, print_table, show

_FORMATS = sorted({spec.format for spec in FORMATS.values()})
_QUANTS = list(dict.fromkeys(spec.quant for spec in FORMATS.values()))

KerasModel = Annotated[Path, typer.Argument(help="A .keras model trained by edgecls.")]


def export(
    model: KerasModel,
    format: Annotated[Optional[str], typer.Option(
        "--format", "-f", help=f"{', '.join(_FORMATS)}, a comma list, or all (default tflite).")] = None,
    quant: Annotated[Optional[str], typer.Option(
        "--quant", "-q", help=f"{', '.join(_QUANTS)}, a comma list, or all (default fp32).")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="Take format and mode from a target profile (see `edgecls targets`).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: MODEL's folder/export).")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        help="Dataset for calibration and verification (default: the training set).")] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        help="Folder of calibration images (default: training split).")] = None,
    calibration_count: Annotated[int, typer.Option(
        help="Number of calibration images, a stratified sample of the training split.")] = 300,
    max_accuracy_drop: Annotated[float, typer.Option(
        help="Gate: largest allowed accuracy drop vs Keras, in points.")] = 1.0,
    io_dtype: Annotated[Optional[str], typer.Option(
        help=f"tflite int8 only: {' (default) or '.join(IO_DTYPES)} input/output.")] = None,
    int8_cpu: Annotated[Optional[str], typer.Option(
        help=f"CPU class int8 artifacts are made for: {', '.join(INT8_CPU_CLASSES)}; default: the target's, else "
             "portable (correct on every CPU).")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(help="Gate: least top-1 agreement with Keras (0..1).")]
    = None,
    explain: Annotated[bool, typer.Option(
        "--explain", help="tflite/onnx: add the last feature map as a second output so `edgecls predict "
        "--explain` draws class activation maps on the device.")] = False,
    strict: Annotated[bool, typer.Option(
        "--strict", help="With --target: only the target's first artifact, and exit 1 when the gate refuses it "
        "(for CI); without it the target's next suitable artifacts are tried in its order.")] = False,
):
    """Convert to TFLite/ONNX/OpenVINO, verify each artifact against the Keras model, gate on accuracy."""
    folder_option("--out", out)
    from ..errors import OptionError
    from ..export.pipeline import device_artifact, export_model

    if strict and not target:
        raise OptionError("--strict applies to --target (only the target's first artifact, which must pass)")
    reports = export_model(model, format, quant, out, dataset, calibration, calibration_count, max_accuracy_drop,
                           io_dtype, console=err.get(), int8_cpu=int8_cpu, min_agreement=min_agreement,
                           target=target, explain=explain, strict=strict)
    _summary(reports)
    if target:
        _device_line(target, reports)
    tried_in_order = target and not strict and format is None and quant is None
    if (device_artifact(reports) is None) if tried_in_order else not all(r.passed for r in reports):
        raise typer.Exit(1)


def _device_line(target: str, reports) -> None:
    """Which artifact the target's device should run, what it costs here, and what was refused."""
    from ..export.pipeline import device_artifact

    chosen = device_artifact(reports)
    refused = [f"{r.key} ({(r.error or 'refused').split(';')[0]})" for r in reports if not r.passed]
    if chosen is None:
        err.print(f"[red]{escape(target)}: no artifact passed the gate;[/] refused: {escape('; '.join(refused))}")
        return
    cost = f"{chosen.size_bytes / 1e6:.2f} MB, {chosen.notes.get('ms_per_image', float('nan')):.1f} ms per image on this host"
    show.print(f"{escape(target)} should run {escape(chosen.path)} ({cost})"
               + (f"; refused before it: {escape('; '.join(refused))}" if refused else ""), highlight=False)


def _summary(reports) -> None:
    from rich.table import Table

    count = next((r.notes["count"] for r in reports if "count" in r.notes), None)
    table = Table(title=f"export summary (on {count} verification images; Δ and agreement vs the Keras model, "
                        "agreement with its 95% interval)")
    table.add_column("artifact", no_wrap=True)
    for col in ("kept", "MB", "accuracy", "Δ pp", "agree", "max|Δp|", "s"):
        table.add_column(col, no_wrap=True)
    for r in reports:
        table.add_row(escape(Path(r.path).name if r.path else r.key), "yes" if r.passed else "[red]no[/]",
                      f"{r.size_bytes / 1e6:.2f}", f"{r.accuracy:.4f}" if r.accuracy is not None else "-",
                      f"{0.0 - r.accuracy_drop_pp:+.2f}" if r.accuracy_drop_pp is not None else "-",
                      f"{r.top1_agreement:.4f} [{r.notes['agreement_ci95'][0]:.3f}-{r.notes['agreement_ci95'][1]:.3f}]"
                      if r.top1_agreement is not None else "-",
                      f"{r.max_prob_diff:.4f}" if r.max_prob_diff is not None else "-", f"{r.seconds:.1f}")
    print_table(show.get(), table)
    if any(r.path for r in reports):
        show.print(f"artifacts and manifests in {Path(next(r.path for r in reports if r.path)).parent}", markup=False)
    for r in reports:
        if r.error:
            err.print(f"[red]{escape(r.key)}:[/] {escape(r.error)}")
        tpu = r.notes.get("edgetpu")
        if tpu:
            compiled = f"compiled: {tpu.get('ops_on_edgetpu')} ops on the Edge TPU, {tpu.get('ops_on_cpu')} on the CPU"
            err.print(f"edgetpu: {tpu.get('message') or compiled}", markup=False)


def register(app: typer.Typer) -> None:
    command(app, export)
