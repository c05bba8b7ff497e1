"""LiteRT (TFLite) export from a SavedModel: fp32, fp16, dynamic range, full-integer, Edge TPU."""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from pathlib import Path

from ..files import atomic_write_bytes
from . import ExportSpec
from .context import ExportContext, native_output_captured

METADATA_NAME = "edgecls.manifest"
COMPILER_TIMEOUT_S = 600  # the compiler takes seconds on a MobileNet; minutes means it hangs


def int8_scheme(int8_cpu: str, io_dtype: str) -> dict:
    """The quantization choices recorded in the manifest for a full-integer LiteRT export.

    One scheme for every CPU class: LiteRT's int8 kernels (XNNPACK, ruy) widen products to 32 bits
    on x86 and Arm alike, so they cannot saturate (measured: identical answers on AVX2, VNNI, Arm).
    Nothing stays float (`kept_float` is empty): a full-integer model is what int8-only
    accelerators and LiteRT's fastest kernels take; the bias correction is added after conversion."""
    return {"int8_cpu": int8_cpu, "activations": "int8 (asymmetric)", "weights": "int8 (symmetric, per-channel)",
            "io": io_dtype, "calibration": "least squared error ranges (tflite_ranges.py)", "kept_float": []}


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path, io_dtype: str | None = None,
           int8_cpu: str | None = None) -> None:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(ctx.saved_model(batch=1)))
    if spec.quant == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif spec.quant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif spec.quant in ("int8", "edgetpu"):
        calibration = ctx.calibration_inputs()

        def representative():
            for x in calibration:
                yield [x[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io = tf.int8 if (spec.quant == "int8" and io_dtype == "int8") else tf.uint8
        converter.inference_input_type = io
        converter.inference_output_type = io
        ctx.quantization_scheme = int8_scheme(int8_cpu or "portable", "int8" if io == tf.int8 else "uint8")
    if spec.quant in ("int8", "edgetpu"):
        flatbuffer = _bias_corrected(ctx, _full_integer(ctx, converter, io))
    else:
        flatbuffer = _converted(ctx, converter)
    atomic_write_bytes(out_path, with_metadata(flatbuffer, METADATA_NAME, ctx.embedded_manifest.encode()))


@contextlib.contextmanager
def _converter_errors(ctx: ExportContext):
    """The converter's C++ chatter into the export log; a failure raised with the log's last lines,
    which say which op or tensor it could not handle."""
    try:
        with native_output_captured(ctx.log):
            yield
    except Exception as exc:
        tail = "\n".join(ctx.log[-1].strip().splitlines()[-5:]) if ctx.log else ""
        raise RuntimeError(f"{exc}\n{tail}".strip()) from exc


def _converted(ctx: ExportContext, converter) -> bytes:
    with _converter_errors(ctx):
        return converter.convert()


def _full_integer(ctx: ExportContext, converter, io_dtype) -> bytes:
    """The converter's full-integer model with activation ranges chosen by least squared error
    over the calibration images instead of their min/max (`tflite_ranges.py`: where int8 error
    entered, and by how much this cuts it)."""
    from .tflite_ranges import calibrated_model, mse_ranges, quantized

    with _converter_errors(ctx):
        calibrated = calibrated_model(converter)
        ranges = mse_ranges(calibrated, ctx.calibration_inputs())
        flatbuffer = quantized(calibrated, ranges, io_dtype)
    ctx.quantization_scheme["ranges"] = {"tensors": len(ranges), "images": int(len(ctx.calibration_inputs()))}
    return flatbuffer


def _bias_corrected(ctx: ExportContext, flatbuffer: bytes) -> bytes:
    """The int8 flatbuffer with its biases corrected against the float conversion of the same
    SavedModel (`tflite_bias.py`: halved the int8-vs-float error on held-out photos)."""
    import tensorflow as tf

    from .tflite_bias import correct_tflite_biases

    float_model = _converted(ctx, tf.lite.TFLiteConverter.from_saved_model(str(ctx.saved_model(batch=1))))
    calibration = ctx.calibration_inputs()
    corrected, layers = correct_tflite_biases(flatbuffer, float_model, calibration)
    ctx.quantization_scheme["bias_correction"] = {"layers": layers, "images": int(len(calibration))}
    return corrected


def with_metadata(flatbuffer: bytes, name: str, payload: bytes) -> bytes:
    """A .tflite flatbuffer with a named metadata buffer added (read back by the runtime)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))
    buffer = schema.BufferT()
    buffer.data = list(payload)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode() and m.name != name] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def compile_edgetpu(model: Path, out_dir: Path) -> dict:
    """Run edgetpu_compiler when present; report mapped ops, or the command to run elsewhere."""
    compiler = shutil.which("edgetpu_compiler")
    command = f"edgetpu_compiler -s -o {out_dir} {model}"
    if compiler is None:
        return {"compiled": False, "command": command,
                "message": f"edgetpu_compiler is not installed here; on a Debian/Ubuntu x86-64 machine "
                           f"with the Coral apt repository run: {command}"}
    try:
        proc = subprocess.run([compiler, "-s", "-o", str(out_dir), str(model)], capture_output=True, text=True,
                              timeout=COMPILER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"compiled": False, "command": command,
                "message": f"edgetpu_compiler did not finish within {COMPILER_TIMEOUT_S} s and was stopped; run: {command}"}
    log = proc.stdout + proc.stderr
    on_tpu = re.search(r"Number of operations that will run on Edge TPU:\s*(\d+)", log)
    on_cpu = re.search(r"Number of operations that will run on CPU:\s*(\d+)", log)
    cpu_ops = re.findall(r"^(\w+)\s+\d+\s+(.*(?:not supported|Mapped to CPU|unsupported).*)$", log, re.M)
    return {
        "compiled": proc.returncode == 0, "command": command, "log": log[-4000:],
        "ops_on_edgetpu": int(on_tpu.group(1)) if on_tpu else None,
        "ops_on_cpu": int(on_cpu.group(1)) if on_cpu else None,
        "cpu_ops": [f"{op}: {why.strip()}" for op, why in cpu_ops],
        "output": str(out_dir / (model.stem + "_edgetpu.tflite")),
    }
