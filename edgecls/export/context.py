"""Shared, lazily built inputs of one export run: the Keras model, SavedModels, calibration data."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..manifest import Manifest
from ..preprocess import Preprocessing


@dataclass
class ExportContext:
    model_path: Path
    manifest: Manifest                       # the Keras model's manifest
    calibration_images: np.ndarray | None    # resized RGB uint8, from the training split
    work_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="edgecls-export-")))
    log: list[str] = field(default_factory=list)
    embedded_manifest: str = "{}"             # JSON embedded in the artifact where the format allows
    quantization_scheme: dict[str, Any] | None = None  # set by an int8 export: types, ranges, CPU class
    explain_model: Any = None                # two-output model (probabilities + feature map) when explaining
    explain_models: dict[str, Any] = field(default_factory=dict)  # per format, built once per run

    @property
    def preprocessing(self) -> Preprocessing:
        return self.manifest.preprocessing

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocessing.size

    @cached_property
    def keras_model(self) -> Any:
        from ..keras_model import load_keras_model

        return load_keras_model(self.model_path)

    def calibration_inputs(self) -> np.ndarray:
        """Calibration images through the shared preprocessing (float32 NHWC)."""
        if self.calibration_images is None or len(self.calibration_images) == 0:
            from ..errors import OptionError

            raise OptionError("this export needs calibration images; pass --dataset or --calibration")
        return self.preprocessing.normalize(self.calibration_images)

    @property
    def model_to_convert(self) -> Any:
        """The model the converters see: the inference model, or its two-output explain variant."""
        return self.explain_model if self.explain_model is not None else self.keras_model

    @property
    def variant(self) -> str:
        """Cache-name tag that keeps the explain variant's intermediate files apart."""
        return "_explain" if self.explain_model is not None else ""

    def saved_model(self, batch: int | None) -> Path:
        """A SavedModel of the inference graph (TFLiteConverter.from_keras_model fails on Keras 3)."""
        path = self.work_dir / f"saved_model{self.variant}_b{batch or 'dyn'}"
        if not path.exists():
            from ..keras_model import keras

            h, w = self.input_size
            spec = keras().InputSpec(shape=(batch, h, w, 3), dtype="float32")
            self.model_to_convert.export(str(path), format="tf_saved_model", input_signature=[spec], verbose=False)
        return path

    def cleanup(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)


@contextlib.contextmanager
def native_output_captured(log: list[str]):
    """Send what C++ code prints to fds 1 and 2 (converter chatter) to `log` instead of the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            log.append(sink.read().decode("utf-8", "replace"))
