"""Bias correction for a full-integer LiteRT model: the same fast correction as `bias_correction.py`
(for the ONNX QDQ graph), applied to the int32 biases of the flatbuffer's convolutions.

LiteRT's converter has none. The float and the int8 flatbuffers of one SavedModel list their
convolutions in the same order with the same weight shapes (checked), so each int8 convolution is
paired with its float one: per output channel c the shift that rounding adds is

    sum_k Wq[c, k] * E[q(x)_k] - sum_k W[c, k] * E[x_k]

with E[.] the per-channel mean of the layer's float input over the calibration images (one run of
the float model) and q(.) the int8 model's rounding of that input. It is taken out of the bias in
the bias's own int32 steps.
"""
from __future__ import annotations

import numpy as np

CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def correct_tflite_biases(int8_model: bytes, float_model: bytes, calibration: np.ndarray) -> tuple[bytes, int]:
    """`int8_model` with the biases of its convolutions corrected against `float_model` (the same
    network in float) on `calibration` (float32 NHWC inputs); and how many layers were corrected."""
    quantized, floating = _interpreter(int8_model), _interpreter(float_model)
    q_convs, f_convs = _convs(quantized), _convs(floating)
    f_details, q_details = floating.get_tensor_details(), quantized.get_tensor_details()
    if len(q_convs) != len(f_convs) or any(
            f_details[f["inputs"][1]]["shape"].tolist() != q_details[q["inputs"][1]]["shape"].tolist()
            for q, f in zip(q_convs, f_convs)):
        return int8_model, 0  # not the same layers in the same order: leave the model as converted
    # Convolutions a mixed model keeps float have nothing rounded to correct.
    pairs = [(q, f) for q, f in zip(q_convs, f_convs) if q_details[q["inputs"][2]]["quantization_parameters"]["scales"].size]
    q_convs, f_convs = [q for q, _ in pairs], [f for _, f in pairs]
    means, rounded = _input_means(floating, f_convs, [q_details[q["inputs"][0]] for q in q_convs], calibration)
    new_biases = {}
    for i, (q, f) in enumerate(zip(q_convs, f_convs)):
        weights = floating.get_tensor(f["inputs"][1]).astype(np.float64)
        shift = (_channel_sums(_dequantized(quantized, q_details[q["inputs"][1]]), rounded[i], q["op_name"])
                 - _channel_sums(weights, means[i], q["op_name"]))
        bias = q_details[q["inputs"][2]]
        step = bias["quantization_parameters"]["scales"].astype(np.float64)
        value = quantized.get_tensor(bias["index"]).astype(np.int64) - np.round(shift / step).astype(np.int64)
        limits = np.iinfo(np.int32)
        new_biases[bias["index"]] = np.clip(value, limits.min, limits.max).astype(np.int32)
    return _with_tensors(int8_model, new_biases), len(new_biases)


def _interpreter(model: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without XNNPACK, which would hide the intermediate tensors read here.
    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    return interpreter


def _convs(interpreter) -> list[dict]:
    """Convolutions with a bias, in execution order."""
    return [op for op in interpreter._get_ops_details() if op["op_name"] in CONV_OPS and len(op["inputs"]) > 2
            and op["inputs"][2] >= 0]


def _input_means(floating, convs: list[dict], quantized_inputs: list[dict], calibration: np.ndarray):
    """Per-channel means of each convolution's float input, and of that input rounded as the int8
    model rounds it, over the calibration images."""
    feed = floating.get_input_details()[0]["index"]
    means = [0.0] * len(convs)
    rounded = [0.0] * len(convs)
    for x in calibration:
        floating.set_tensor(feed, x[None].astype(np.float32))
        floating.invoke()
        for i, (op, detail) in enumerate(zip(convs, quantized_inputs)):
            value = floating.get_tensor(op["inputs"][0]).astype(np.float64)
            scale = float(detail["quantization_parameters"]["scales"][0])
            zero = int(detail["quantization_parameters"]["zero_points"][0])
            limits = np.iinfo(detail["dtype"])
            q = np.clip(np.round(value / scale) + zero, limits.min, limits.max)
            means[i] = means[i] + value.mean(axis=(0, 1, 2))
            rounded[i] = rounded[i] + ((q - zero) * scale).mean(axis=(0, 1, 2))
    return [m / len(calibration) for m in means], [r / len(calibration) for r in rounded]


def _dequantized(interpreter, detail: dict) -> np.ndarray:
    """Weights as the int8 model computes with them (per-channel scales on the quantized axis)."""
    params = detail["quantization_parameters"]
    q = interpreter.get_tensor(detail["index"]).astype(np.float64)
    shape = [1] * q.ndim
    shape[params["quantized_dimension"]] = -1
    scales = params["scales"].astype(np.float64).reshape(shape if params["scales"].size > 1 else [1] * q.ndim)
    zeros = params["zero_points"].astype(np.float64)
    zeros = zeros.reshape(scales.shape) if zeros.size == scales.size else zeros.reshape([1] * q.ndim)
    return (q - zeros) * scales


def _channel_sums(weights: np.ndarray, input_means: np.ndarray, op_name: str) -> np.ndarray:
    """sum over each output channel's inputs and kernel taps of weight x that input's mean."""
    if op_name == "DEPTHWISE_CONV_2D":  # [1, H, W, C * multiplier]
        per_tap = weights.sum(axis=(0, 1, 2))
        multiplier = per_tap.size // input_means.size
        return per_tap * np.repeat(input_means, multiplier)
    return weights.sum(axis=(1, 2)) @ input_means  # [O, H, W, I]


def _with_tensors(model: bytes, values: dict[int, np.ndarray]) -> bytes:
    """The flatbuffer with the constant tensors of subgraph 0 at `values`' indices replaced."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    tensors = tree.subgraphs[0].tensors
    for index, value in values.items():
        tree.buffers[tensors[index].buffer].data = np.frombuffer(value.tobytes(), np.uint8)
    builder = flatbuffers.Builder(1024)
    builder.Finish(tree.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())
