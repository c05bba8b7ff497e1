"""OpenVINO IR export: fp32, fp16-compressed weights, int8.

int8 is the QDQ graph of the ONNX int8 export (`qdq.py`) converted by OpenVINO, which turns its
QuantizeLinear/DequantizeLinear pairs into FakeQuantize ops and runs them with oneDNN's int8
kernels. NNCF's post-training quantization of the IR was the earlier route; on photos the
export never saw it erred twice as much (bench/results/int8_heldout*.md: mean |dp| 0.033 vs
0.016 on flowers-small folds; its bias correction, mixed preset, and float first layers or head
changed little), because its 7-bit weights (overflow fix, needed on AVX2) covered the depthwise
layers too and it had no way to keep them at 8 bits. The same graph for both engines also means
both answer the same.
"""
from __future__ import annotations

from pathlib import Path

from . import ExportSpec
from .context import ExportContext


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path, int8_cpu: str | None = None) -> None:
    from ..engines.openvino import import_openvino

    ov = import_openvino()  # telemetry declined first: a conversion sends an event too
    if spec.quant == "int8":
        from .onnx import fp32_path
        from .qdq import quantized

        model = ov.convert_model(str(quantized(ctx, fp32_path(ctx), int8_cpu or "portable")))
    else:
        model = ov.convert_model(str(ctx.saved_model(batch=None)))
    model.set_rt_info(ctx.embedded_manifest, ["edgecls", "manifest"])
    # save_model writes .xml then .bin; the caller writes into a private folder and renames.
    ov.save_model(model, str(out_path), compress_to_fp16=spec.quant == "fp16")
