"""A saved Keras classifier (`model.keras` + its manifest): import Keras, load, score, save.

Shared by the stages that use a trained model (export, explain, ensemble, evaluate) and by the
trainer that writes one, so none of them imports another stage for it. Keras is imported only
inside the functions that need it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .errors import ModelError
from .files import commit_file, sha256_file
from .manifest import Manifest, load_manifest, manifest_path, verify_checksums
from .preprocess import Preprocessing


def keras():
    """The keras module, or an error saying which extra installs it."""
    try:
        import keras as module
    except ImportError:
        from .errors import missing_extra

        raise missing_extra("keras (and tensorflow-cpu)", "train") from None
    return module


def load_keras_model(path: str | Path):
    """A `.keras` archive loaded for inference, refusing one that would run code on load."""
    path = Path(path)
    try:
        # safe_mode refuses archives that would run code on load (Lambda layers, custom objects).
        return keras().saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises a variety of errors for damaged archives
        if "safe_mode" in str(exc) or "safe mode" in str(exc):
            raise ModelError(f"{path}: refused: the model contains code that would run when it is loaded "
                             "(such as a Lambda layer), which safe mode does not allow; rebuild it without "
                             "such layers") from None
        raise ModelError(f"{path}: not a loadable .keras model (truncated or corrupt?): {exc}") from None


def save_keras_model(model, path: str | Path) -> Path:
    """Write a Keras model atomically (Keras writes a temporary sibling, which then replaces `path`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # Keras wants the .keras suffix
    try:
        model.save(tmp)
        commit_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def keras_manifest(model_path: Path, labels: list[str], preprocessing: Preprocessing, source: dict[str, Any],
                   verification: dict[str, Any] | None = None) -> Manifest:
    """The manifest of a saved Keras classifier: float32 NHWC images in, softmax probabilities out."""
    return Manifest(
        format="keras", quantization="fp32", labels=labels, preprocessing=preprocessing,
        input={"name": "image", "shape": [-1, *preprocessing.size, 3], "dtype": "float32", "layout": "NHWC",
               "quantization": None},
        output={"name": "probabilities", "shape": [-1, len(labels)], "dtype": "float32", "activation": "softmax"},
        source=source, artifact_sha256=sha256_file(model_path), verification=verification or {},
    )


class KerasScorer:
    """Probabilities from a saved `.keras` model for RGB uint8 pictures (already resized)."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        manifest = load_manifest(path)
        if manifest is None:
            raise ModelError(f"{path}: no manifest ({manifest_path(path).name}); train with edgecls or write one")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        verify_checksums(path, manifest)
        self.model = load_keras_model(path)
        self.manifest = manifest
        self.labels = manifest.labels
        self.preprocessing = manifest.preprocessing

    def scores_resized(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities (N, classes) for resized RGB uint8 pictures (N, H, W, 3)."""
        out = [np.asarray(self.model.predict_on_batch(self.preprocessing.normalize(images[i : i + batch_size])))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32)
