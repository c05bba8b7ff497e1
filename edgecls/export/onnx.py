"""ONNX export (Keras' own exporter, tf2onnx underneath): fp32, fp16 and static QDQ int8.

The int8 graph, its types per CPU class and what stays float are `qdq.py`'s; the OpenVINO int8
export converts the same graph.
"""
from __future__ import annotations

from pathlib import Path

from ..files import atomic_write_bytes
from . import ExportSpec
from .context import ExportContext, native_output_captured


def fp32_path(ctx: ExportContext) -> Path:
    """The float ONNX graph of the model being exported (built once per run)."""
    path = ctx.work_dir / f"model{ctx.variant}_fp32_raw.onnx"
    if not path.exists():
        with native_output_captured(ctx.log):  # TensorFlow's grappler lines are not the user's business
            ctx.model_to_convert.export(str(path), format="onnx", verbose=False)
    return path


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path, int8_cpu: str | None = None) -> None:
    import onnx

    src = fp32_path(ctx)
    if spec.quant == "fp32":
        model = onnx.load(str(src))
    elif spec.quant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Float32 inputs and outputs keep the runtime's interface the same for every mode.
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    else:
        from .qdq import quantized

        model = onnx.load(str(quantized(ctx, src, int8_cpu or "portable")))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgecls.manifest", ctx.embedded_manifest
    atomic_write_bytes(out_path, model.SerializeToString())
