"""Export registry: one entry per (format, quantization), each naming its module and options.

Adding a format or mode is one module in this package plus one `register(...)` row. Options are
checked against the table before any slow work starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import checks
from ..cpu import INT8_CPU_CLASSES
from ..errors import OptionError

IO_DTYPES = ("uint8", "int8")  # input/output types of a full-integer LiteRT model


@dataclass(frozen=True)
class ExportSpec:
    format: str
    quant: str
    suffix: str
    module: str                 # edgecls.export.<module>.export(ctx, spec, out_path, **options)
    engine: str                 # edgecls.engines name that runs the artifact
    calibrated: bool = False    # needs calibration images
    options: tuple[str, ...] = ()
    description: str = ""
    tag: str = ""               # file name tag; defaults to the mode

    @property
    def key(self) -> str:
        return f"{self.format}:{self.quant}"

    def filename(self, stem: str = "model") -> str:
        return f"{stem}_{self.tag or self.quant}{self.suffix}"


FORMATS: dict[tuple[str, str], ExportSpec] = {}


def register(spec: ExportSpec) -> ExportSpec:
    FORMATS[(spec.format, spec.quant)] = spec
    return spec


_ROWS = [
    ExportSpec("tflite", "fp32", ".tflite", "tflite", "litert", options=("explain",), description="float32 LiteRT"),
    ExportSpec("tflite", "fp16", ".tflite", "tflite", "litert", options=("explain",),
               description="float16 weights, float compute"),
    ExportSpec("tflite", "dynamic", ".tflite", "tflite", "litert", options=("explain",),
               description="int8 weights, dynamic-range activations"),
    ExportSpec("tflite", "int8", ".tflite", "tflite", "litert", calibrated=True,
               options=("io_dtype", "int8_cpu", "explain"),
               description="full-integer int8, uint8 (default) or int8 input/output"),
    ExportSpec("tflite", "mixed", ".tflite", "tflite_mixed", "litert", calibrated=True, options=("int8_cpu",),
               description="int8 but for the first convolutions, kept float as measured per model; float32 I/O; "
                           "CPU targets only (never the Edge TPU)", tag="int8_mixed"),
    ExportSpec("tflite", "edgetpu", ".tflite", "tflite", "litert", calibrated=True, options=("int8_cpu",),
               description="full-integer, uint8 I/O, batch 1, Edge TPU compiler-ready", tag="edgetpu_ready"),
    ExportSpec("onnx", "fp32", ".onnx", "onnx", "onnxruntime", options=("explain",), description="float32 ONNX"),
    ExportSpec("onnx", "fp16", ".onnx", "onnx", "onnxruntime", options=("explain",),
               description="float16 ONNX, float32 I/O"),
    ExportSpec("onnx", "int8", ".onnx", "onnx", "onnxruntime", calibrated=True, options=("int8_cpu", "explain"),
               description="static QDQ int8, per-channel weights, types chosen per CPU class"),
    ExportSpec("openvino", "fp32", ".xml", "openvino", "openvino", description="float32 OpenVINO IR"),
    ExportSpec("openvino", "fp16", ".xml", "openvino", "openvino", description="IR with fp16-compressed weights"),
    ExportSpec("openvino", "int8", ".xml", "openvino", "openvino", calibrated=True, options=("int8_cpu",),
               description="NNCF post-training int8, overflow fix per CPU class"),
]
for _row in _ROWS:
    register(_row)


def format_names() -> list[str]:
    return sorted({f for f, _ in FORMATS})


def quant_names(fmt: str) -> list[str]:
    return [q for f, q in FORMATS if f == fmt]


def resolve(formats: str | list[str], quants: str | list[str], options: dict[str, Any] | None = None) -> list[ExportSpec]:
    """Expand `all` and comma lists into registry entries; reject unknown names and options.

    A (format, mode) pair the registry lacks is an error only when both were named explicitly;
    with `all` on one side, the pairs that exist are taken.
    """
    fmts, qs = checks.names("format", formats, "tflite,onnx"), checks.names("quant", quants, "fp32,int8")
    all_f, all_q = fmts == ["all"], qs == ["all"]
    if all_f:
        fmts = format_names()
    for f in fmts:
        if f not in format_names():
            raise OptionError(f"unknown format {f!r}; expected one of: {', '.join(format_names())}, all")
    known_q = sorted({q for _, q in FORMATS})
    if not all_q:
        for q in qs:
            if q not in known_q:
                raise OptionError(f"unknown quantization {q!r}; expected one of: {', '.join(known_q)}, all")
    specs = []
    for f in fmts:
        for q in (quant_names(f) if all_q else qs):
            spec = FORMATS.get((f, q))
            if spec is None:
                if all_f:
                    continue
                raise OptionError(f"format {f} has no {q!r} mode; it has: {', '.join(quant_names(f))}")
            specs.append(spec)
    if not specs:
        raise OptionError(f"no export matches --format {formats} --quant {quants}")
    options = options or {}
    checks.one_of("int8_cpu", options.get("int8_cpu"), tuple(INT8_CPU_CLASSES))
    checks.one_of("io_dtype", options.get("io_dtype"), IO_DTYPES)
    for name, value in options.items():
        if value is None:
            continue
        if not any(name in s.options for s in specs):
            allowed = [s.key for s in FORMATS.values() if name in s.options]
            raise OptionError(f"option {name} does not apply to {', '.join(s.key for s in specs)}"
                              + (f"; it applies to {', '.join(allowed)}" if allowed else ""), name)
    return specs
