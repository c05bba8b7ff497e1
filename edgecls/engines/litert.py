"""LiteRT (TensorFlow Lite) engine: ai-edge-litert, falling back to tflite_runtime. Never TensorFlow."""
from __future__ import annotations

import ctypes
import platform
import struct
import sys
from pathlib import Path

import numpy as np

from ..errors import ModelError, missing_extra
from . import TensorInfo, filtered_stderr, require_tensors

EDGETPU_LIBRARY = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


def interpreter_module():
    """LiteRT's interpreter module and the distribution that provides it (ai-edge-litert, else
    tflite-runtime); also what `edgecls doctor` probes delegates with."""
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


class _FlatBuffer:
    """Bounds-checked reads of a FlatBuffer: just what the TFLite schema walk below needs, without
    importing the 12,000-line generated schema module (a cold start pays for every import)."""

    def __init__(self, data: bytes):
        self.data = data

    def _unpack(self, fmt: str, pos: int) -> int:
        if pos < 0 or pos + struct.calcsize(fmt) > len(self.data):
            raise IndexError("read past the end of the file")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def deref(self, pos: int) -> int:
        return pos + self._unpack("<I", pos)

    def field(self, table: int, index: int) -> int:
        """Position of field `index` of the table at `table`, or 0 when absent."""
        vtable = table - self._unpack("<i", table)
        size = self._unpack("<H", vtable)
        slot = 4 + 2 * index
        offset = self._unpack("<H", vtable + slot) if slot + 2 <= size else 0
        return table + offset if offset else 0

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, index)
        return self._unpack(fmt, pos) if pos else default

    def vector(self, table: int, index: int, item_size: int) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, index)
        if not pos:
            return 0, 0
        vec = self.deref(pos)
        length = self._unpack("<I", vec)
        if vec + 4 + length * item_size > len(self.data):
            raise IndexError("vector past the end of the file")
        return vec + 4, length

    def tables(self, table: int, index: int) -> list[int]:
        start, length = self.vector(table, index, 4)
        return [self.deref(start + 4 * i) for i in range(length)]

    def ints(self, table: int, index: int) -> list[int]:
        start, length = self.vector(table, index, 4)
        return list(struct.unpack_from(f"<{length}i", self.data, start)) if length else []

    def bytes(self, table: int, index: int) -> bytes:
        start, length = self.vector(table, index, 1)
        return self.data[start : start + length]


# TFLite builtin operator codes (tensorflow/lite/schema/schema.fbs).
_SOFTMAX, _LOGISTIC, _CUSTOM = 25, 14, 32
_PASSTHROUGH = {6, 114, 22, 43}  # DEQUANTIZE, QUANTIZE, RESHAPE, SQUEEZE


def check_flatbuffer(path: Path, data: bytes) -> dict[str, str]:
    """Reject truncated or non-TFLite files before the interpreter sees them (it may crash on
    them); returns the model's text metadata entries (such as an embedded edgecls manifest) and,
    under "edgecls.output_activation", the final activation read from the graph."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TFLite model (no TFL3 file identifier); truncated or corrupt?")
    fb = _FlatBuffer(data)
    try:
        model = fb.deref(0)
        buffers = fb.tables(model, 4)
        for buf in buffers:
            fb.vector(buf, 0, 1)  # the data vector lies inside the file
            offset, size = fb.scalar(buf, 1, "<Q"), fb.scalar(buf, 2, "<Q")
            if offset > 1 and offset + size > len(data):
                raise IndexError("buffer past end of file")
        codes = [max(fb.scalar(c, 0, "<b"), fb.scalar(c, 3, "<i")) for c in fb.tables(model, 1)]
        graphs = fb.tables(model, 2)
        if not graphs:
            raise IndexError("no subgraph")
        producers: dict[int, tuple[int, list[int]]] = {}
        for g, graph in enumerate(graphs):
            for tensor in fb.tables(graph, 0):
                fb.ints(tensor, 0)
            for op in fb.tables(graph, 3):
                index = fb.scalar(op, 0, "<I")
                if index >= len(codes):
                    raise IndexError("operator code out of range")
                inputs, outputs = fb.ints(op, 1), fb.ints(op, 2)
                if g == 0:
                    producers.update((t, (codes[index], inputs)) for t in outputs)
        metadata = {"edgecls.output_activation": _final_activation(producers, fb.ints(graphs[0], 2))}
        for entry in fb.tables(model, 6):
            name = fb.bytes(entry, 0).decode("utf-8", "replace")
            if name.startswith("edgecls."):
                metadata[name] = fb.bytes(buffers[fb.scalar(entry, 1, "<I")], 0).decode("utf-8")
        return metadata
    except (IndexError, struct.error, ValueError, TypeError, UnicodeDecodeError):
        raise ModelError(f"{path}: not a loadable TFLite model (truncated or corrupt?)") from None


def _final_activation(producers: dict[int, tuple[int, list[int]]], outputs: list[int]) -> str | None:
    """The activation that produces the main graph's first output: softmax, sigmoid or none;
    None when a custom op (such as the Edge TPU's) hides it.

    Quantize/dequantize and reshapes after it are looked through (int8 models end in
    softmax -> quantize; some converters add a reshape)."""
    tensor = outputs[0] if outputs else -1
    for _ in range(8):
        if tensor not in producers:
            return "none"
        code, inputs = producers[tensor]
        if code == _SOFTMAX:
            return "softmax"
        if code == _LOGISTIC:
            return "sigmoid"
        if code == _CUSTOM:
            return None
        if code not in _PASSTHROUGH or not inputs:
            return "none"
        tensor = inputs[0]
    return "none"


# LiteRT's C++ log lines that are not the user's business (printed on every interpreter).
CHATTER = (b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


def quiet_stderr():
    """LiteRT's set-up with its routine INFO chatter removed from stderr (other lines kept)."""
    return filtered_stderr(CHATTER)


def _tensor_info(d: dict) -> TensorInfo:
    scale, zero_point = d.get("quantization", (0.0, 0))
    shape = tuple(int(v) for v in d.get("shape_signature", d["shape"]))
    return TensorInfo(d["name"], shape, np.dtype(d["dtype"]), float(scale), int(zero_point))


class LiteRTEngine:
    name = "litert"

    def __init__(self, path: Path, num_threads: int | None = None, use_xnnpack: bool = True,
                 delegate: str | None = None):
        mod, dist = interpreter_module()
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
                # The bytes already read and checked: the file is read once, and the model run is
                # the model checked (it cannot change on disk in between).
                self._interp = mod.Interpreter(model_content=data, num_threads=num_threads,
                                               experimental_delegates=delegates or None, **kwargs)
                self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: not a loadable TFLite model (truncated or corrupt?): {exc}") from None
        require_tensors(path, len(self._interp.get_input_details()), len(self._interp.get_output_details()))
        self.input = _tensor_info(self._interp.get_input_details()[0])
        self.outputs = tuple(_tensor_info(d) for d in self._interp.get_output_details())
        self.output = self.outputs[0]
        self._in_index = self._interp.get_input_details()[0]["index"]
        self._out_indices = [d["index"] for d in self._interp.get_output_details()]
        self._batch = int(self._interp.get_input_details()[0]["shape"][0])

    def _invoke(self, batch: np.ndarray) -> None:
        if batch.shape[0] != self._batch:
            with quiet_stderr():
                self._interp.resize_tensor_input(self._in_index, list(batch.shape))
                self._interp.allocate_tensors()
            self._batch = batch.shape[0]
        self._interp.set_tensor(self._in_index, batch)
        self._interp.invoke()

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._invoke(batch)
        return self._interp.get_tensor(self._out_indices[0]).copy()

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        self._invoke(batch)
        return [self._interp.get_tensor(index).copy() for index in self._out_indices]


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
