"""ONNX Runtime engine (CPU execution provider)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError, missing_extra
from . import TensorInfo

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
}


def _info(node) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    return TensorInfo(node.name, shape, np.dtype(_ORT_TYPES.get(node.type, np.float32)))


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
        self.input = _info(self._session.get_inputs()[0])
        self.output = _info(self._session.get_outputs()[0])
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run([self.output.name], {self.input.name: batch})[0]


def open_engine(path: Path, **options) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(path, **options)
