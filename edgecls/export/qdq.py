"""Static int8 quantization into an ONNX QDQ graph (onnxruntime's quantizer), shared by the ONNX
and OpenVINO int8 exports: built once per run and CPU class, then saved as ONNX or converted to
OpenVINO IR (OpenVINO turns the QDQ pairs into its own int8 FakeQuantize ops).

Types follow onnxruntime's advice per CPU class: on x86-64 without VNNI its uint8 x int8 kernels
(VPMADDUBSW) saturate unless weights use 7 bits (`reduce_range`); with VNNI full 8-bit weights
are exact; on Arm signed int8 activations and weights (S8S8) are the fast, exact path. "portable"
(the default) is the x86-without-VNNI choice, exact everywhere. oneDNN, under OpenVINO, has the
same uint8 x int8 instruction on AVX2, and 7-bit weights make it exact there too.

Three choices within every scheme cost no speed and were chosen by measuring int8 error on photos
the export never saw (bench/int8_heldout.py, bench/results/int8_heldout*.md):
- depthwise convolutions keep full 8-bit weights: onnxruntime's and oneDNN's depthwise kernels
  widen both operands before multiplying, so they cannot saturate (checked under an emulated
  AVX2 CPU and with oneDNN capped at AVX2), and with 7 bits the first depthwise layer of
  MobileNetV2 was the single most harmful layer;
- the classifier head (the final dense layer and its softmax) stays float, so probabilities are
  not rounded to 1/255 steps;
- bias correction (`bias_correction.py`): the mean shift that weight and input rounding add to each
  layer's output is taken out of its bias; it halved the error.
One costs some speed, well within the int8 speed-up (int8/fp32 p50 stays far below 0.8): the first
convolutions stay float (FLOAT_LEADING_CONVS). Float layers are not bit-identical across ISAs (FMA
order), so answers on another CPU may differ by float rounding; the int8 layers still cannot
saturate.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .context import ExportContext

# int8 CPU class -> (activation type, weight type, reduce_range)
INT8_SCHEMES = {
    "portable": ("uint8", "int8", True),
    "x86-avx2": ("uint8", "int8", True),
    "x86-vnni": ("uint8", "int8", False),
    "arm": ("int8", "int8", False),
}
HEAD_OPS = ("Gemm", "MatMul", "Softmax")  # the classifier head: the final dense layer and its softmax
# The first convolutions stay float (MobileNetV2 at 224: the stem and blocks 1-3, at 112 and 56 px):
# measured on held-out clothing photos they carry most of the int8 error (agreement 0.972 -> 0.982;
# the last 12 float instead: 0.971). At most a quarter of a model's convolutions, so a small
# network keeps its int8 speed-up.
FLOAT_LEADING_CONVS = 12


def int8_scheme(int8_cpu: str) -> dict:
    """The quantization choices recorded in the manifest (what stayed float, the calibration and
    the bias correction are added when the graph is built)."""
    activation, weight, reduce_range = INT8_SCHEMES[int8_cpu]
    return {"int8_cpu": int8_cpu, "tool": "onnxruntime.quantization (QDQ)", "activations": activation,
            "weights": weight, "per_channel": True, "reduce_range": reduce_range,
            "full_range_weights": "depthwise convolutions"}


def precision_plan(model) -> tuple[list[str], dict[str, list[dict]]]:
    """The nodes kept float (the first convolutions and the classifier head) and the weights given
    the full 8-bit range whatever the scheme (depthwise convolutions: one filter per channel), for
    the quantizer."""
    graph = model.graph
    weight_shapes = {init.name: list(init.dims) for init in graph.initializer}
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    float_nodes = convs[:min(FLOAT_LEADING_CONVS, len(convs) // 4)]
    float_nodes += [n.name for n in graph.node if n.op_type in HEAD_OPS]
    full_range = {}
    for node in graph.node:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        shape = weight_shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if shape and group > 1 and shape[0] == group and shape[1] == 1:
            full_range[node.input[1]] = [{"axis": 0, "reduce_range": False}]
    return float_nodes, full_range


def quantized(ctx: ExportContext, fp32_path: Path, int8_cpu: str) -> Path:
    """The int8 QDQ graph of `fp32_path` for `int8_cpu`, built once per run; sets the context's
    quantization scheme for the manifest."""
    path = ctx.work_dir / f"model{ctx.variant}_int8_{int8_cpu}.onnx"
    scheme_path = path.with_suffix(".scheme.json")
    if not (path.exists() and scheme_path.exists()):
        scheme_path.write_text(json.dumps(_quantize(ctx, fp32_path, int8_scheme(int8_cpu), path)))
    ctx.quantization_scheme = json.loads(scheme_path.read_text())
    return path


def _quantize(ctx: ExportContext, src: Path, scheme: dict, out: Path) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .bias_correction import correct_biases

    pre = ctx.work_dir / f"model{ctx.variant}_fp32_pre.onnx"
    if not pre.exists():
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
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    float_nodes, full_range = precision_plan(onnx.load(str(pre)))
    raw = out.with_name(out.stem + "_raw.onnx")
    quantize_static(str(pre), str(raw), Reader(), quant_format=QuantFormat.QDQ, per_channel=scheme["per_channel"],
                    activation_type=types[scheme["activations"]], weight_type=types[scheme["weights"]],
                    reduce_range=scheme["reduce_range"], nodes_to_exclude=float_nodes,
                    extra_options={"CalibStridedMinMax": stride, "TensorQuantOverrides": full_range})
    model = onnx.load(str(raw))
    corrected = correct_biases(model, onnx.load(str(pre)), calibration)
    onnx.save(model, str(out))
    return {**scheme, "kept_float": float_nodes,
            "calibration": {"method": "minmax", "images": int(len(calibration))},
            "bias_correction": {"layers": corrected, "images": int(len(calibration))}}
