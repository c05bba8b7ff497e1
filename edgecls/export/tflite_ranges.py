"""Activation ranges for a full-integer LiteRT model, chosen by quantization error instead of min/max.

LiteRT's converter quantizes each activation tensor over the [min, max] its calibration images
reached. Where the error enters (measured tensor by tensor, float vs int8 interpreter on held-out
photos: `bench/int8_layers.py`): the linear bottleneck outputs and residual sums of MobileNetV2
carry rare outliers, so their min/max ranges are several times wider than their values and the
bulk of them lands on a handful of the 256 steps (std/step 7-20 on EuroSAT); the error grows
through the network and the last convolution amplifies it. A range that minimises the expected
squared error (clipping the rare outliers + rounding everything else, from a histogram of the
calibration images' values) keeps ~2x finer steps there.

The converter calibrates (a float model with each tensor's min/max recorded), then quantizes;
this module sits between the two steps with TensorFlow's own calibrator and MLIR quantizer (the
steps `TFLiteConverter` runs), replacing the recorded min/max. The quantizer then derives every
scale, zero point and int32 bias from them as usual, so the graph is the same full-integer graph.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

BINS = 2048           # histogram bins over a tensor's calibrated [min, max]
SHRINK_STEPS = 48     # candidate ends: min and max each scaled by 48 factors from 1 down to 0.05
LEVELS = 255          # int8 steps across a range


def calibrated_model(converter) -> bytes:
    """The float flatbuffer with each tensor's calibrated min/max recorded (the converter's first
    step of full-integer quantization; `converter` is set up for it, representative data included)."""
    converter._experimental_calibrate_only = True
    try:
        return converter.convert()
    finally:
        converter._experimental_calibrate_only = False


def mse_ranges(calibrated: bytes, calibration: np.ndarray) -> dict[int, tuple[float, float]]:
    """Per activation tensor (by index), the range that minimises clip + rounding error over the
    calibration images' values; the model's input and output keep theirs."""
    tensors = _ranged_tensors(calibrated)
    histograms = _histograms(calibrated, tensors, calibration)
    return {index: best_range(histograms[index], low, high) for index, (low, high) in tensors.items()}


def best_range(histogram: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """The [low * f, high * g] (zero stays inside, as int8 needs; f and g searched apart, since a
    tensor's two tails differ) with the least expected squared error for values distributed as
    `histogram` over [low, high]."""
    if histogram.sum() == 0 or high <= low:
        return low, high
    bins = len(histogram)
    centers = low + (np.arange(bins) + 0.5) * (high - low) / bins
    weights = histogram / histogram.sum()
    factors = np.linspace(1.0, 0.05, SHRINK_STEPS)
    highs = high * factors                                         # every candidate top at once
    best, best_error = (low, high), np.inf
    for a in low * factors:
        clipped = np.clip(centers[None, :], a, highs[:, None])
        errors = ((centers[None, :] - clipped) ** 2 * weights[None, :]).sum(1) + ((highs - a) / LEVELS) ** 2 / 12.0
        i = int(np.argmin(errors))
        if errors[i] < best_error - 1e-15:
            best, best_error = (float(a), float(highs[i])), float(errors[i])
    return best


def quantized(calibrated: bytes, ranges: dict[int, tuple[float, float]], io_dtype,
              kept_float: list[str] | None = None) -> bytes:
    """The full-integer flatbuffer from `calibrated` with `ranges` in place of the recorded min/max
    (the converter's second step, TensorFlow's MLIR quantizer; `io_dtype` a tf dtype); the ops
    whose outputs `kept_float` names stay float (a mixed model, `tflite_mixed.py`)."""
    from tensorflow.lite.python import convert

    tree = _tree(calibrated)
    tensors = tree.subgraphs[0].tensors
    for index, (low, high) in ranges.items():
        tensors[index].quantization.min = [float(low)]
        tensors[index].quantization.max = [float(high)]
    options = {"denylisted_nodes": list(kept_float)} if kept_float else {}
    return convert.mlir_quantize(_bytes(tree), input_data_type=io_dtype, output_data_type=io_dtype, **options)


def _ranged_tensors(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """Activation tensors with one recorded range, but for the model's input and output."""
    tree = _tree(calibrated)
    graph = tree.subgraphs[0]
    ends = set(graph.inputs) | set(graph.outputs)
    found = {}
    for index, tensor in enumerate(graph.tensors):
        q = tensor.quantization
        if index in ends or q is None or q.min is None or q.max is None or len(q.min) != 1:
            continue
        found[index] = (float(q.min[0]), float(q.max[0]))
    return found


def _histograms(calibrated: bytes, tensors: dict[int, tuple[float, float]],
                calibration: Iterable[np.ndarray]) -> dict[int, np.ndarray]:
    """Each tensor's values over the calibration images, binned over its recorded range."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without XNNPACK, which would hide the intermediate tensors read here.
    interpreter = Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    feed = interpreter.get_input_details()[0]["index"]
    histograms = {index: np.zeros(BINS) for index in tensors}
    for image in calibration:
        interpreter.set_tensor(feed, np.asarray(image, np.float32)[None])
        interpreter.invoke()
        for index, (low, high) in tensors.items():
            if high > low:
                histograms[index] += np.histogram(interpreter.get_tensor(index), bins=BINS, range=(low, high))[0]
    return histograms


def _tree(flatbuffer: bytes):
    from ai_edge_litert import schema_py_generated as schema

    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(flatbuffer, 0))


def _bytes(tree) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
