"""ONNX Runtime engine (CPU execution provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError, missing_extra
from . import TensorInfo, require_tensors

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
}


def _info(node, path: Path, side: str) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    if node.type not in _ORT_TYPES:
        raise ModelError(f"{path}: the model's {side} {node.name!r} is a {node.type}; expected a numeric tensor "
                         "(float, float16, double, uint8 or int8 for an image)")
    return TensorInfo(node.name, shape, np.dtype(_ORT_TYPES[node.type]))


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


# Where tensors can sit in an ONNX model: message kind -> {field number: kind of the field's message}
# (onnx.proto: ModelProto.graph 7, training_info 20, functions 25; GraphProto.node 1, initializer 5,
# sparse_initializer 15; NodeProto.attribute 5; AttributeProto t 5, g 6, tensors 10, graphs 11,
# sparse_tensor 22, sparse_tensors 23; SparseTensorProto values 1, indices 2; FunctionProto node 7,
# attribute_proto 11; TrainingInfoProto initialization 1, algorithm 2).
_HOLDS = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "function": {7: "node", 11: "attribute"},
    "training": {1: "graph", 2: "graph"},
}


def external_data_locations(data: bytes) -> list[str]:
    """The `location` of every tensor the model keeps in an external file (TensorProto.external_data,
    field 13), read from the protobuf without the `onnx` package. ValueError if it cannot be parsed."""
    found: list[str] = []

    def walk(buf: memoryview, kind: str, depth: int) -> None:
        if depth > 64:
            raise ValueError("nested too deeply")
        for field, value in _fields(buf):
            if kind == "tensor":
                if field == 13:  # StringStringEntryProto: key 1, value 2
                    entry = {f: bytes(v).decode("utf-8", "replace") for f, v in _fields(value)}
                    if entry.get(1) == "location":
                        found.append(entry.get(2, ""))
            elif field in _HOLDS[kind]:
                walk(value, _HOLDS[kind][field], depth + 1)

    try:
        walk(memoryview(data), "model", 0)
    except IndexError:
        raise ValueError("truncated protobuf") from None
    return found


def check_external_data(path: Path, data: bytes) -> list[str]:
    """The model's external data files, each refused unless it lies inside the model's folder: a
    location such as ../../etc/passwd (or a link inside the folder that leads out) would make the
    runtime read any file as weights. Returns the locations (for the manifest's checksums)."""
    try:
        locations = external_data_locations(data)
    except ValueError as exc:
        raise ModelError(f"{path}: not a loadable ONNX model (truncated or corrupt?): {exc}") from None
    folder = path.resolve().parent
    for location in locations:
        target = (path.parent / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or folder not in target.parents:
            raise ModelError(f"{path}: a tensor's external data file {location!r} lies outside the model's folder "
                             f"{folder}; refused (a model may only read weights from its own folder)")
    return locations


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
        data = path.read_bytes()
        self.external_data = check_external_data(path, data)  # before onnxruntime reads any of them
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ModelError(f"{path}: not a loadable ONNX model (truncated or corrupt?): {exc}") from None
        require_tensors(path, len(self._session.get_inputs()), len(self._session.get_outputs()))
        self.input = _info(self._session.get_inputs()[0], path, "input")
        self.outputs = tuple(_info(o, path, "output") for o in self._session.get_outputs())
        self.output = self.outputs[0]
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.output_activation = final_activation(data)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self.output.name], {self.input.name: batch})[0]

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self.input.name: batch})


def open_engine(path: Path, **options) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, **options)
