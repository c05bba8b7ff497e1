"""ONNX export (Keras' own exporter, tf2onnx underneath): fp32, fp16 and static QDQ int8."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..manifest import atomic_write_bytes
from . import ExportSpec
from .context import ExportContext


def _fp32(ctx: ExportContext) -> Path:
    path = ctx.work_dir / "model_fp32_raw.onnx"
    if not path.exists():
        ctx.keras_model.export(str(path), format="onnx", verbose=False)
    return path


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path) -> None:
    import onnx

    src = _fp32(ctx)
    if spec.quant == "fp32":
        model = onnx.load(str(src))
    elif spec.quant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        # Float32 inputs and outputs keep the runtime's interface the same for every mode.
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    else:
        model = _quantize_static(ctx, src)
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgecls.manifest", ctx.embedded_manifest
    atomic_write_bytes(out_path, model.SerializeToString())


def _quantize_static(ctx: ExportContext, src: Path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = ctx.work_dir / "model_fp32_pre.onnx"
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
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"CalibStridedMinMax": stride})
    return onnx.load(str(out))

