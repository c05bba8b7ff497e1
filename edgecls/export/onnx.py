"""ONNX export (Keras' own exporter, tf2onnx underneath): fp32, fp16 and static QDQ int8.

int8 types follow onnxruntime's own advice per CPU class: on x86-64 without VNNI its uint8 x
int8 kernels (VPMADDUBSW) saturate unless weights use 7 bits (`reduce_range`); with VNNI full
8-bit weights are exact; on Arm signed int8 activations and weights (S8S8) are the fast, exact
path. "portable" (the default) is the x86-without-VNNI choice, exact everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from . import ExportSpec
from .context import ExportContext, native_output_captured


def _fp32(ctx: ExportContext) -> Path:
    path = ctx.work_dir / f"model{ctx.variant}_fp32_raw.onnx"
    if not path.exists():
        with native_output_captured(ctx.log):  # TensorFlow's grappler lines are not the user's business
            ctx.model_to_convert.export(str(path), format="onnx", verbose=False)
    return path


# int8 CPU class -> (activation type, weight type, reduce_range)
INT8_SCHEMES = {
    "portable": ("uint8", "int8", True),
    "x86-avx2": ("uint8", "int8", True),
    "x86-vnni": ("uint8", "int8", False),
    "arm": ("int8", "int8", False),
}


def int8_scheme(int8_cpu: str) -> dict:
    """The quantization choices recorded in the manifest for an int8 ONNX export."""
    activation, weight, reduce_range = INT8_SCHEMES[int8_cpu]
    return {"int8_cpu": int8_cpu, "format": "QDQ", "activations": activation, "weights": weight,
            "per_channel": True, "reduce_range": reduce_range, "calibration": "minmax"}


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path, int8_cpu: str | None = None) -> None:
    import onnx

    src = _fp32(ctx)
    if spec.quant == "fp32":
        model = onnx.load(str(src))
    elif spec.quant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Float32 inputs and outputs keep the runtime's interface the same for every mode.
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    else:
        model = _quantize_static(ctx, src, int8_scheme(int8_cpu or "portable"))
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgecls.manifest", ctx.embedded_manifest
    atomic_write_bytes(out_path, model.SerializeToString())


def _quantize_static(ctx: ExportContext, src: Path, scheme: dict):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = ctx.work_dir / f"model{ctx.variant}_fp32_pre.onnx"
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
    input_name = onnx.load(str(pre)).graph.input[0].name
    calibration = ctx.calibration_inputs()

    class Reader(CalibrationDataReader):
        """Serves calibration images in strides (see CalibStridedMinMax below)."""

        def __init__(self):
            self.set_range(0, len(calibration))

        def __len__(self):
            return len(calibration)

        def set_range(self, start_index: int, end_index: int):
            self._it = iter(calibration[start_index:end_index])

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x[None].astype(np.float32)}

    # Strided calibration merges min/max ranges stride by stride; without it onnxruntime keeps
    # every activation of every image until the end (about 60 MB per 224px MobileNetV2 image).
    stride = max(d for d in range(1, 17) if len(calibration) % d == 0)

    out = ctx.work_dir / "model_int8_raw.onnx"
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=scheme["per_channel"],
                    activation_type=types[scheme["activations"]], weight_type=types[scheme["weights"]],
                    reduce_range=scheme["reduce_range"], extra_options={"CalibStridedMinMax": stride})
    ctx.quantization_scheme = scheme
    return onnx.load(str(out))

