"""Inference engines: one small module per runtime, chosen from the artifact's file suffix.

Each engine wraps one interpreter behind the same members (`input`, `output`, `run`, `version`;
`outputs` and `run_all` for models with several outputs, such as the explain export's feature map). Engines import their runtime only when opened, so a device needs just the one it uses.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ..errors import ModelError, OptionError


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (-1 for a dynamic dimension), dtype and affine quantization of a tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale > 0 and np.issubdtype(self.dtype, np.integer)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": np.dtype(self.dtype).name}
        d["quantization"] = {"scale": self.scale, "zero_point": self.zero_point} if self.quantized else None
        return d


class Engine(Protocol):
    name: str
    version: str
    input: TensorInfo
    output: TensorInfo
    # The model's final activation read from its graph: "softmax", "sigmoid", "none" (logits),
    # or None when the graph cannot be read.
    output_activation: str | None
    outputs: tuple[TensorInfo, ...]  # every output tensor; `output` is the first

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch already in the model's input dtype and layout; returns raw output."""

    def run_all(self, batch: np.ndarray) -> list[np.ndarray]:
        """`run`, returning every output (raw), in the order of `outputs`."""


@dataclass(frozen=True)
class EngineSpec:
    name: str
    suffixes: tuple[str, ...]
    module: str  # module under edgecls.engines that defines `open_engine(path, **options)`
    extra: str   # the pip extra that installs its runtime
    options: tuple[str, ...]
    companions: tuple[str, ...] = ()  # suffixes of files that belong to the model file (its weights)


ENGINES: dict[str, EngineSpec] = {}


def register_engine(spec: EngineSpec) -> EngineSpec:
    ENGINES[spec.name] = spec
    return spec


register_engine(EngineSpec("litert", (".tflite",), "litert", "runtime", ("num_threads", "use_xnnpack", "delegate")))
register_engine(EngineSpec("onnxruntime", (".onnx",), "onnx", "onnx", ("num_threads",)))
register_engine(EngineSpec("openvino", (".xml",), "openvino", "openvino",
                           ("num_threads", "device", "performance_hint", "precision"), companions=(".bin",)))


@contextmanager
def filtered_stderr(drop: tuple[bytes, ...]):
    """Capture file descriptor 2 while native code runs, then pass on every line except those
    starting with one of `drop` (a runtime's routine chatter): warnings and errors still show."""
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
        kept = [line for line in b"".join(chunks).splitlines(keepends=True) if not line.startswith(drop)]
        if kept:
            os.write(2, b"".join(kept))


def _temp_fd() -> int:
    import tempfile

    fd, name = tempfile.mkstemp(prefix="edgecls-stderr-")
    os.unlink(name)
    return fd


def require_tensors(path: Path, inputs: int, outputs: int) -> None:
    """A classifier needs at least one input and one output tensor (the first of each is used)."""
    if inputs < 1 or outputs < 1:
        raise ModelError(f"{path}: the model has {inputs} input and {outputs} output tensors; "
                         "expected an image input and a class-score output")


def engine_for(path: str | Path) -> EngineSpec:
    suffix = Path(path).suffix.lower()
    for spec in ENGINES.values():
        if suffix in spec.suffixes:
            return spec
    known = ", ".join(s for spec in ENGINES.values() for s in spec.suffixes)
    raise ModelError(f"{path}: unknown model format {suffix or '(no suffix)'!r}; expected one of {known}")


def companion_files(path: str | Path) -> list[Path]:
    """The files that belong to a model file by its format (an OpenVINO IR's weights .bin);
    none for a suffix no engine reads."""
    path = Path(path)
    try:
        spec = engine_for(path)
    except ModelError:
        return []
    return [path.with_suffix(c) for c in spec.companions]


def open_engine(path: str | Path, **options: Any) -> Engine:
    """Open a model file with the engine its suffix calls for."""
    path = Path(path)
    spec = engine_for(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: model file is empty")
    for companion in companion_files(path):
        if not companion.is_file():
            raise ModelError(f"{path}: the weights file {companion.name} is missing beside it")
    unknown = sorted(k for k, v in options.items() if v is not None and k not in spec.options)
    if unknown:
        raise OptionError(f"engine {spec.name} does not take {', '.join(unknown)}; it takes {', '.join(spec.options)}")
    opener: Callable[..., Engine] = import_module(f"{__name__}.{spec.module}").open_engine
    return opener(path, **{k: v for k, v in options.items() if v is not None})
