"""LiteRT (TensorFlow Lite) engine: ai-edge-litert, falling back to tflite_runtime. Never TensorFlow."""
from __future__ import annotations

import ctypes
import os
import platform
import struct
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ModelError, missing_extra
from . import TensorInfo

EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def _interpreter_module():
    try:
        from ai_edge_litert import interpreter as mod

        return mod, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod  # type: ignore[import-not-found]

        return mod, "tflite-runtime"
    except ImportError:
        raise missing_extra("ai-edge-litert (or tflite-runtime)", "runtime") from None


def check_flatbuffer(path: Path, data: bytes) -> dict[str, str]:
    """Reject truncated or non-TFLite files before the interpreter sees them (it may crash on
    them); returns the model's text metadata entries (such as an embedded edgecls manifest)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TFLite model (no TFL3 file identifier); truncated or corrupt?")
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # tflite_runtime ships no schema; the identifier check above must do
        return {}
    try:
        model = schema.Model.GetRootAsModel(data, 0)
        for i in range(model.BuffersLength()):
            buf = model.Buffers(i)
            slot = buf._tab.Offset(4)  # the `data` vector
            if slot:
                start, length = buf._tab.Vector(slot), buf._tab.VectorLen(slot)
                if start + length > len(data):
                    raise IndexError("buffer past end of file")
            if buf.Offset() > 1 and buf.Offset() + buf.Size() > len(data):
                raise IndexError("buffer past end of file")
        for g in range(model.SubgraphsLength()):
            graph = model.Subgraphs(g)
            for t in range(graph.TensorsLength()):
                graph.Tensors(t).ShapeLength()
            for o in range(graph.OperatorsLength()):
                graph.Operators(o).InputsLength()
        metadata = {"edgecls.output_activation": _final_activation(schema, model)}
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            name = (entry.Name() or b"").decode("utf-8", "replace")
            if name.startswith("edgecls."):
                metadata[name] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes().decode("utf-8")
        return metadata
    except (IndexError, struct.error, ValueError, TypeError):
        raise ModelError(f"{path}: not a loadable TFLite model (truncated or corrupt?)") from None


def _final_activation(schema, model) -> str:
    """The activation that produces the first output of the main graph: softmax, sigmoid or none.

    Quantize/dequantize and reshapes after it are looked through (int8 models end in
    softmax -> quantize; some converters add a reshape)."""
    ops = schema.BuiltinOperator
    passthrough = {ops.QUANTIZE, ops.DEQUANTIZE, ops.RESHAPE, ops.SQUEEZE}
    graph = model.Subgraphs(0)
    producer = {}
    for o in range(graph.OperatorsLength()):
        op = graph.Operators(o)
        for j in range(op.OutputsLength()):
            producer[op.Outputs(j)] = op
    tensor = graph.Outputs(0)
    for _ in range(8):
        op = producer.get(tensor)
        if op is None:
            return "none"
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == ops.SOFTMAX:
            return "softmax"
        if builtin == ops.LOGISTIC:
            return "sigmoid"
        if builtin not in passthrough or op.InputsLength() == 0:
            return "none"
        tensor = op.Inputs(0)
    return "none"


# LiteRT's C++ log lines that are not the user's business (printed on every interpreter).
CHATTER = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


@contextmanager
def quiet_stderr():
    """Capture file descriptor 2 while LiteRT's C++ code runs, then pass on every line except
    its routine INFO chatter: warnings and errors still reach the user."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    sink = os.memfd_create("edgecls-stderr") if hasattr(os, "memfd_create") else _temp_fd()
    os.dup2(sink, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.lseek(sink, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(sink, 1 << 16):
            chunks.append(chunk)
        os.close(sink)
        kept = [line for line in b"".join(chunks).splitlines(keepends=True) if not line.startswith(CHATTER)]
        if kept:
            os.write(2, b"".join(kept))


def _temp_fd() -> int:
    import tempfile

    fd, name = tempfile.mkstemp(prefix="edgecls-stderr-")
    os.unlink(name)
    return fd


def _tensor_info(d: dict) -> TensorInfo:
    scale, zero_point = d.get("quantization", (0.0, 0))
    shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
    return TensorInfo(d["name"], shape, np.dtype(d["dtype"]), float(scale), int(zero_point))


class LiteRTEngine:
    name = "litert"

    def __init__(self, path: Path, num_threads: int | None = None, use_xnnpack: bool = True,
                 delegate: str | None = None):
        mod, dist = _interpreter_module()
        data = path.read_bytes()
        self.metadata = check_flatbuffer(path, data)
        # From the graph: "softmax" / "sigmoid" / "none" (logits); None when it cannot be read.
        self.output_activation = self.metadata.pop("edgecls.output_activation", None)
        self.version = _dist_version(dist)
        delegates = []
        # An Edge TPU-compiled model carries the `edgetpu-custom-op`.
        if delegate is None and b"edgetpu-custom-op" in data:
            delegate = "edgetpu"
        if delegate == "edgetpu":
            lib = EDGETPU_LIBRARY.get(platform.system(), "libedgetpu.so.1")
            try:
                ctypes.CDLL(lib)  # probe first: a failed load_delegate leaves a half-made object behind
                delegates.append(mod.load_delegate(lib))
            except (ValueError, OSError) as exc:
                raise ModelError(
                    f"{path}: this model is compiled for the Edge TPU and needs the Edge TPU runtime "
                    f"library {lib}, which could not be loaded ({exc}). Install libedgetpu "
                    "(https://coral.ai/software/#edgetpu-runtime) and plug in the accelerator, "
                    "or run the CPU build of the model instead."
                ) from None
        elif delegate is not None:
            try:
                delegates.append(mod.load_delegate(delegate))
            except (ValueError, OSError) as exc:
                raise ModelError(f"{path}: cannot load delegate {delegate!r} ({exc})") from None
        kwargs = {}
        if not use_xnnpack and hasattr(mod, "OpResolverType"):
            kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            with quiet_stderr():
                self._interp = mod.Interpreter(model_path=str(path), num_threads=num_threads,
                                               experimental_delegates=delegates or None, **kwargs)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: not a loadable TFLite model (truncated or corrupt?): {exc}") from None
        self.input = _tensor_info(self._interp.get_input_details()[0])
        self.output = _tensor_info(self._interp.get_output_details()[0])
        self._in_index = self._interp.get_input_details()[0]["index"]
        self._out_index = self._interp.get_output_details()[0]["index"]
        self._batch = int(self._interp.get_input_details()[0]["shape"][0])

    def run(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            with quiet_stderr():
                self._interp.resize_tensor_input(self._in_index, list(batch.shape))
                self._interp.allocate_tensors()
            self._batch = batch.shape[0]
        self._interp.set_tensor(self._in_index, batch)
        self._interp.invoke()
        return self._interp.get_tensor(self._out_index).copy()


def _dist_version(dist: str) -> str:
    # The package's own __version__ first: importlib.metadata costs tens of ms at a cold start.
    package = "ai_edge_litert" if dist == "ai-edge-litert" else "tflite_runtime"
    found = getattr(sys.modules.get(package), "__version__", None)
    if found:
        return f"{dist} {found}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{dist} {version(dist)}"
    except PackageNotFoundError:
        return dist


def open_engine(path: Path, **options) -> LiteRTEngine:
    return LiteRTEngine(path, **options)
