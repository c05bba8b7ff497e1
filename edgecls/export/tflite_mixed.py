"""A mixed LiteRT model for CPU targets: int8, but for the first convolutions, kept float.

Measured tensor by tensor (float vs int8 interpreter, `bench/int8_layers.py`), the int8 error of
a MobileNetV2 feature-head model enters mostly in its first layers: at 112x112 the first
depthwise convolution alone rounds ~4x more than its output step (BatchNorm folded into 3x3
kernels leaves a few large weights per channel), and what enters early is carried and amplified
by every layer after it. Keeping a short prefix of convolutions float removes most of it (EuroSAT,
held out: 0.81 -> 0.96 agreement with the first 6 float, before bias correction).

How long a prefix is measured per model: prefixes of growing length are quantized (the same
least-squared-error ranges and bias correction as the full-integer model) and compared with the
float model on a third of the calibration images held back from the ranges and the bias
correction; the shortest that agrees on at least `TARGET_AGREEMENT` of them is kept (else the
best tried), never more than a quarter of the convolutions. The kept
tensors, and what each prefix measured, go into the manifest (`quantization_scheme.kept_float`,
`.prefix_search`). The input is float32 (the first layer is float).

Never for the Edge TPU, which runs only full-integer models (its target lists no mixed artifact).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from . import ExportSpec
from .context import ExportContext

TARGET_AGREEMENT = 0.995   # on held-back calibration images, against the float model
PREFIXES = (3, 6, 9, 12, 18)
MAX_FLOAT_FRACTION = 0.25  # of the convolutions


def export(ctx: ExportContext, spec: ExportSpec, out_path: Path, int8_cpu: str | None = None) -> None:
    import tensorflow as tf

    from .tflite import METADATA_NAME, _converted, _converter_errors, int8_scheme, with_metadata
    from .tflite_bias import correct_tflite_biases
    from .tflite_ranges import calibrated_model, mse_ranges, quantized

    # Every third calibration image is held back from the ranges and the bias correction and only
    # judges the prefixes: judged on the images they were fitted on, 3 float convolutions agreed
    # 100% on a flowers model whose held-out photos then flipped more than with none.
    images = ctx.calibration_inputs()
    judge, calibration = images[2::3], np.concatenate([images[0::3], images[1::3]])
    converter = _int8_converter(ctx, calibration)
    with _converter_errors(ctx):
        calibrated = calibrated_model(converter)
        ranges = mse_ranges(calibrated, calibration)
    float_model = _converted(ctx, tf.lite.TFLiteConverter.from_saved_model(str(ctx.saved_model(batch=1))))
    reference = _top1(float_model, judge)
    convs = _conv_outputs(calibrated)
    searched, best = [], None
    for n in [p for p in PREFIXES if p <= max(1, int(len(convs) * MAX_FLOAT_FRACTION))]:
        with _converter_errors(ctx):
            model = quantized(calibrated, ranges, tf.float32, kept_float=convs[:n])
        model, _ = correct_tflite_biases(model, float_model, calibration)
        agreement = float(np.mean(_top1(model, judge) == reference))
        searched.append({"float_convolutions": n, "held_back_agreement": round(agreement, 4), "images": len(judge)})
        if best is None or agreement > best[1]:
            best = (n, agreement, model)
        # Enough; or two longer prefixes in a row gained nothing: the error is not in the first layers.
        if agreement >= TARGET_AGREEMENT or (len(searched) >= 3 and best[0] < searched[-2]["float_convolutions"]):
            break
    n, _, model = best
    # The first part of each fused name says which layer it is (".../Conv1_relu/Relu6;...").
    ctx.quantization_scheme = {**int8_scheme(int8_cpu or "portable", "float32"),
                               "kept_float": [name.split(";")[0] for name in convs[:n]],
                               "prefix_search": searched, "ranges": {"tensors": len(ranges), "images": len(calibration)}}
    atomic_write_bytes(out_path, with_metadata(model, METADATA_NAME, ctx.embedded_manifest.encode()))


def _int8_converter(ctx: ExportContext, calibration: np.ndarray):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(ctx.saved_model(batch=1)))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def _conv_outputs(model: bytes) -> list[str]:
    """The output tensor names of the model's convolutions, in execution order."""
    interpreter = _interpreter(model)
    details = interpreter.get_tensor_details()
    return [details[op["outputs"][0]]["name"] for op in interpreter._get_ops_details()
            if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D")]


def _top1(model: bytes, images: np.ndarray) -> np.ndarray:
    """The model's top-1 answer for float32 inputs (quantized on the way in where it takes integers)."""
    interpreter = _interpreter(model)
    feed, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    answers = []
    for x in images:
        x = x[None].astype(np.float32)
        if feed["dtype"] != np.float32:
            scale, zero = feed["quantization"]
            info = np.iinfo(feed["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(feed["dtype"])
        interpreter.set_tensor(feed["index"], x)
        interpreter.invoke()
        answers.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.asarray(answers)


def _interpreter(model: bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    return interpreter
