"""ONNX Runtime engine (CPU execution provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError, missing_extra
from . import TensorInfo, require_tensors

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
}


def _info(node) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorInfo(node.name, shape, np.dtype(_ORT_TYPES.get(node.type, np.float32)))


_PASSTHROUGH = {"DequantizeLinear", "QuantizeLinear", "Reshape", "Flatten", "Squeeze", "Identity", "Cast"}


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def _fields(buf: memoryview):
    """(field number, bytes) of the length-delimited fields of one protobuf message; others skipped."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(buf, i)
            if i + length > len(buf):
                raise ValueError("field past the end")
            yield field, buf[i : i + length]
            i += length
        else:
            raise ValueError(f"unsupported wire type {wire}")


def final_activation(data: bytes) -> str | None:
    """The op that produces the graph's first output, read from the ONNX protobuf without the
    `onnx` package: softmax, sigmoid or none (logits); None when the file cannot be parsed."""
    try:
        graph = next((v for f, v in _fields(memoryview(data)) if f == 7), None)  # ModelProto.graph
        if graph is None:
            return None
        producer, outputs = {}, []
        for f, v in _fields(graph):
            if f == 1:  # GraphProto.node
                op_type, inputs, outs = "", [], []
                for nf, nv in _fields(v):
                    if nf == 1:
                        inputs.append(bytes(nv).decode("utf-8", "replace"))
                    elif nf == 2:
                        outs.append(bytes(nv).decode("utf-8", "replace"))
                    elif nf == 4:
                        op_type = bytes(nv).decode("utf-8", "replace")
                for name in outs:
                    producer[name] = (op_type, inputs)
            elif f == 12:  # GraphProto.output (ValueInfoProto, name = 1)
                outputs.append(next((bytes(nv).decode("utf-8", "replace") for nf, nv in _fields(v) if nf == 1), ""))
    except (ValueError, IndexError):
        return None
    if not outputs:
        return None
    tensor = outputs[0]
    for _ in range(8):
        op_type, inputs = producer.get(tensor, ("", []))
        if op_type == "Softmax":
            return "softmax"
        if op_type == "Sigmoid":
            return "sigmoid"
        if op_type not in _PASSTHROUGH or not inputs:
            return "none"
        tensor = inputs[0]
    return "none"


class OnnxRuntimeEngine:
    name = "onnxruntime"

    def __init__(self, path: Path, num_threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise missing_extra("onnxruntime", "onnx") from None
        self.version = f"onnxruntime {ort.__version__}"
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"{path}: not a loadable ONNX model (truncated or corrupt?): {exc}") from None
        require_tensors(path, len(self._session.get_inputs()), len(self._session.get_outputs()))
        self.input = _info(self._session.get_inputs()[0])
        self.outputs = tuple(_info(o) for o in self._session.get_outputs())
        self.output = self.outputs[0]
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.output_activation = final_activation(path.read_bytes())

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self.output.name], {self.input.name: batch})[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self.input.name: batch})


def open_engine(path: Path, **options) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, **options)
