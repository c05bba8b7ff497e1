"""OpenVINO engine (IR .xml + .bin)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError, missing_extra
from . import TensorInfo, filtered_stderr, require_tensors


def _info(port) -> TensorInfo:
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    name = port.get_any_name() if port.get_names() else ""  # get_any_name raises for an unnamed port
    return TensorInfo(name, shape, np.dtype(port.get_element_type().to_dtype()))


class OpenVINOEngine:
    name = "openvino"

    def __init__(self, path: Path, num_threads: int | None = None, device: str = "CPU",
                 performance_hint: str = "LATENCY", precision: str = "f32"):
        try:
            import openvino as ov
        except ImportError:
            raise missing_extra("openvino", "openvino") from None
        self.version = f"openvino {ov.get_version()}"
        core = ov.Core()
        # f32 by default: on CPUs with bf16 units OpenVINO would otherwise run "fp32" models in
        # bf16, and the artifact would not behave as it was verified.
        config = {"PERFORMANCE_HINT": performance_hint, "INFERENCE_PRECISION_HINT": precision}
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = int(num_threads)
        self._core, self._device, self._config = core, device, config
        try:
            # A file that is not IR makes OpenVINO try its other frontends, which log protobuf
            # parse errors; the exception below says it all.
            with filtered_stderr((b"[libprotobuf ERROR",)):
                self._model = core.read_model(str(path))
            self.rt_info = {k: str(v) for k, v in _flat_rt_info(self._model).items()}
            require_tensors(path, len(self._model.inputs), len(self._model.outputs))
            self.input = _info(self._model.input(0))
            self.outputs = tuple(_info(port) for port in self._model.outputs)
            self.output = self.outputs[0]
            self.output_activation = _final_activation(self._model)
        except RuntimeError as exc:
            raise ModelError(f"{path}: not a loadable OpenVINO IR (truncated or corrupt?): {_first_line(exc)}") from None
        try:
            self._compile(1 if self.input.shape[0] == -1 else self.input.shape[0])
        except RuntimeError as exc:
            # Options (device, hint, precision, threads) are the usual cause here, not the file.
            raise ModelError(f"{path}: OpenVINO cannot compile this model for device {device!r} with "
                             f"{config}: {_first_line(exc)}") from None

    def _compile(self, batch: int) -> None:
        # A static batch compiles to faster kernels than a dynamic one; another batch size
        # recompiles (rare: batch 1 on a device, a fixed batch in benchmarks).
        if self.input.shape[0] == -1:
            self._model.reshape({0: [batch, *self.input.shape[1:]]})
        self._compiled = self._core.compile_model(self._model, self._device, self._config)
        self._request = self._compiled.create_infer_request()
        self._batch = batch

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self._compile(batch.shape[0])
        self._request.infer({0: batch}, share_inputs=True)
        return self._request.get_output_tensor(0).data.copy()

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        self.run(batch)
        return [self._request.get_output_tensor(i).data.copy() for i in range(len(self.outputs))]


_PASSTHROUGH = {"Convert", "FakeQuantize", "Reshape", "Squeeze", "Unsqueeze"}


def _final_activation(model) -> str | None:
    """softmax, sigmoid or none (logits) from the op feeding the first result; None if unknown."""
    try:
        node = model.get_results()[0].input_value(0).get_node()
        for _ in range(8):
            kind = node.get_type_name()
            if kind in ("Softmax", "SoftMax"):
                return "softmax"
            if kind == "Sigmoid":
                return "sigmoid"
            if kind not in _PASSTHROUGH:
                return "none"
            node = node.input_value(0).get_node()
    except (RuntimeError, AttributeError, IndexError):
        return None
    return "none"


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    return lines[0].strip() if lines else type(exc).__name__


def _flat_rt_info(model) -> dict:
    try:
        if model.has_rt_info(["edgecls", "manifest"]):
            return {"manifest": model.get_rt_info(["edgecls", "manifest"]).astype(str)}
    except (RuntimeError, AttributeError):
        pass
    return {}


def open_engine(path: Path, **options) -> OpenVINOEngine:
    return OpenVINOEngine(path, **options)
