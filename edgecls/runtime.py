"""The light device runtime: artifact + manifest -> top-k labels. numpy, OpenCV and one engine only.

Never imports TensorFlow or Keras (a test proves it).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from . import checks
from .engines import Engine, open_engine
from .errors import ModelError, OptionError
from .manifest import ACTIVATIONS, Manifest, load_manifest, read_labels, verify_checksums
from .preprocess import Preprocessing, check_interpolation, check_resize, read_rgb

Prediction = list[tuple[str, float]]


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    """Affine-quantize float values into an integer dtype, saturating at its range."""
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero_point)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def finite_scores(scores: np.ndarray, where: str | Path | None) -> np.ndarray:
    """`scores` when every value is a finite number; a ModelError otherwise. A model with NaN
    weights (or one that overflows) answers NaN, and argmax(NaN) would silently say class 0."""
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores).all(axis=-1)).sum()) if scores.ndim > 1 else 1
        raise ModelError(f"{where}: the model's outputs are not finite numbers (NaN or infinity) for {bad} of "
                         f"{len(scores) if scores.ndim > 1 else 1} input(s): its weights are broken or it "
                         "overflows; retrain or re-export it")
    return scores


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# What a user may declare for a model whose manifest and graph do not tell (--activation).
DECLARED_ACTIVATIONS = ("softmax", "none")


def check_activation(activation: str | None) -> None:
    """A declared final activation (when given) is one a user may declare."""
    checks.one_of("activation", activation, DECLARED_ACTIVATIONS)


def resolve_activation(engine: Engine, manifest: Manifest | None, explicit: str | None = None) -> str | None:
    """The model's final activation, decided once when the model is opened: an explicit choice,
    else the manifest, else the model's graph (a final Softmax op). None when nothing tells.

    "softmax" and "sigmoid" outputs are used as they are; "none" (logits) gets a softmax. Never
    guessed from the values: a uint8 softmax output of an uncertain image sums to well below 1."""
    if explicit is not None:
        explicit = "none" if explicit == "logits" else explicit
        if explicit not in ACTIVATIONS:
            raise OptionError(f"activation {explicit!r}: expected softmax (the model outputs probabilities) "
                              "or none (it outputs logits)", "activation")
        return explicit
    declared = manifest.output.get("activation") if manifest else None
    if declared:
        return "none" if declared == "logits" else declared
    return getattr(engine, "output_activation", None)


def top_k(scores: np.ndarray, labels: Sequence[str], k: int = 5) -> Prediction:
    """Highest-scoring (label, score) pairs of one score vector, best first."""
    k = max(1, min(k, len(scores)))
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [(labels[i], float(scores[i])) for i in idx]


class Classifier:
    """An image classifier over one engine, configured from its artifact's manifest.

    Thread safety: `prepare` only reads immutable state (the preprocessing and the pixel lookup
    table), so any number of threads may call it at once. Everything that runs the engine
    (`scores_from_inputs`, `scores`, `predict`) must be called by one thread at a time: a LiteRT
    interpreter, for one, holds its input and output tensors in place between calls. The stream
    keeps to this (one preprocessing thread, one inference thread); for parallel inference, open
    one Classifier per thread.
    """

    def __init__(self, engine: Engine, labels: Sequence[str], preprocessing: Preprocessing,
                 manifest: Manifest | None = None, path: Path | None = None, activation: str | None = None):
        self.engine = engine
        self.preprocessing = preprocessing
        self.manifest = manifest
        self.path = path
        shape = engine.input.shape
        if len(shape) != 4:
            raise ModelError(f"{path}: expected a 4-D image input, the model has input shape {list(shape)}")
        # NCHW models (ONNX zoo, PyTorch exports) have the 3 channels in dimension 1.
        self.layout = "NCHW" if shape[1] == 3 and shape[3] != 3 else "NHWC"
        if 3 not in (shape[1], shape[3]) and shape[3] != -1:
            raise ModelError(f"{path}: the model's input {list(shape)} does not take 3-channel (RGB) images "
                             "([N, H, W, 3] or [N, 3, H, W]); edgecls feeds colour pictures")
        if np.dtype(engine.input.dtype).name not in _INPUT_TYPES:
            raise ModelError(f"{path}: the model's input is {np.dtype(engine.input.dtype).name}; an image input "
                             f"must be one of {', '.join(_INPUT_TYPES)}")
        classes = int(engine.output.shape[-1])
        labels = list(labels)
        if classes > 0 and len(labels) == classes + 1 and labels[0].lower() == "background":
            labels = labels[1:]  # label files that list a background class the model does not output
        if classes > 0 and len(labels) != classes:
            raise ModelError(f"{path}: the model has {classes} outputs but {len(labels)} labels were given")
        self.labels = labels
        self.output_activation = resolve_activation(engine, manifest, activation)
        self._lut = self._pixel_lut()

    def _pixel_lut(self) -> np.ndarray:
        """Model input value for each 8-bit pixel value and channel, shape (256, 1, 3).

        Normalisation and quantization act on each pixel value independently, so they are
        evaluated once for the 256 possible values (with the very same functions) and applied
        as a table lookup per frame: identical results, a fraction of the work.
        """
        values = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2)
        return np.ascontiguousarray(self.to_model_input(self.preprocessing.normalize(values)))

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_artifact(cls, path: str | Path, labels: Sequence[str] | str | Path | None = None,
                      preprocessing: Preprocessing | None = None, normalization: str | None = None,
                      resize: str | None = None, verify_checksum: bool = True, activation: str | None = None,
                      interpolation: str | None = None, **engine_options: Any) -> "Classifier":
        """Open an artifact; its manifest (or embedded metadata) supplies labels and preprocessing.

        For a model without a manifest pass `labels` (a list or a label file) and, for a float
        input, `normalization` (tf, torch, caffe, unit or raw); `activation` (softmax or none)
        when its graph does not show whether it outputs probabilities. `resize` and
        `interpolation` override the manifest's (or the default stretch / area) for a model
        trained with another recipe, e.g. interpolation="linear" for TF-slim's bilinear resize.
        """
        path = Path(path)
        engine, manifest = open_artifact(path, verify_checksum, **engine_options)
        if isinstance(labels, (str, Path)):
            labels = read_labels(labels)
        if labels is None:
            if manifest is None:
                raise ModelError(f"{path}: no manifest ({path.name}.json) beside the model; pass a label file")
            labels = manifest.labels
        if preprocessing is None:
            if manifest is not None and normalization is None and resize is None and interpolation is None:
                preprocessing = manifest.preprocessing
            else:
                preprocessing = _default_preprocessing(engine, path, manifest, normalization, resize, interpolation)
        clf = cls(engine, labels, preprocessing, manifest, path, activation)
        if clf.output_activation is None:
            raise ModelError(f"{path}: {_UNKNOWN_ACTIVATION}")
        return clf

    # --- inference ------------------------------------------------------------------
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 picture -> one model input in the engine's dtype and layout (no batch dim)."""
        import cv2

        resized = self.preprocessing.resize_image(rgb)
        if self.preprocessing.channel_order == "BGR":
            resized = resized[..., ::-1]
        x = cv2.LUT(np.ascontiguousarray(resized), self._lut)
        return np.ascontiguousarray(np.moveaxis(x, -1, -3)) if self.layout == "NCHW" else x

    def to_model_input(self, x: np.ndarray) -> np.ndarray:
        """Normalised float values -> the engine's input dtype (quantized if needed)."""
        info = self.engine.input
        if info.quantized:
            return quantize(x, info.scale, info.zero_point, info.dtype)
        return np.ascontiguousarray(x.astype(info.dtype, copy=False))

    def scores_from_inputs(self, batch: np.ndarray) -> np.ndarray:
        """Run prepared inputs (N, ...) and return class probabilities (N, classes)."""
        raw = self.engine.run(batch)
        out = self.engine.output
        scores = dequantize(raw, out.scale, out.zero_point) if out.quantized else raw.astype(np.float32)
        scores = scores.reshape(scores.shape[0], -1)
        if self.output_activation is None:
            raise ModelError(f"{self.path}: {_UNKNOWN_ACTIVATION}")
        if self.output_activation == "none":
            scores = softmax(scores)
        return finite_scores(scores, self.path)

    def scores(self, images: Iterable[np.ndarray], batch_size: int = 1) -> np.ndarray:
        """Probabilities for RGB uint8 pictures of any size."""
        batch = np.stack([self.prepare(img) for img in images])
        if batch_size <= 1 or self.engine.input.shape[0] == 1:
            return np.concatenate([self.scores_from_inputs(batch[i : i + 1]) for i in range(len(batch))])
        return np.concatenate([self.scores_from_inputs(batch[i : i + batch_size])
                               for i in range(0, len(batch), batch_size)])

    def predict(self, image: np.ndarray | str | Path, top_k_count: int = 5, color: str = "RGB") -> Prediction:
        """Top-k (label, probability) for one image file or uint8 picture (`color="BGR"` for
        frames straight from OpenCV)."""
        if isinstance(image, (str, Path)):
            rgb = read_rgb(image)
        elif color.upper() == "BGR":
            rgb = np.ascontiguousarray(image[..., ::-1])
        elif color.upper() == "RGB":
            rgb = image
        else:
            raise OptionError(f"color must be RGB or BGR, got {color!r}")
        return top_k(self.scores([rgb])[0], self.labels, top_k_count)


_INPUT_TYPES = ("float32", "float16", "float64", "uint8", "int8")
_UNKNOWN_ACTIVATION = ("cannot tell whether the model outputs probabilities (no manifest, and its graph could "
                       "not be read); pass --activation softmax (it ends in a softmax) or none (it outputs logits)")


def _default_preprocessing(engine: Engine, path: Path, manifest: Manifest | None, normalization: str | None,
                           resize: str | None, interpolation: str | None = None) -> Preprocessing:
    shape = engine.input.shape
    nchw = shape[1] == 3 and shape[3] != 3
    size = (shape[2], shape[3]) if nchw else (shape[1], shape[2])
    if manifest is not None:
        base = manifest.preprocessing
        if normalization is None:  # keep the manifest's numbers, also a custom normalisation's
            return replace(base, resize=check_resize(resize or base.resize),
                           interpolation=check_interpolation(interpolation or base.interpolation))
        return Preprocessing.named(normalization, base.size, resize or base.resize, base.crop_fraction,
                                   interpolation or base.interpolation)
    if min(size) <= 0:
        raise ModelError(f"{path}: the model input has a dynamic size {list(shape)}; cannot infer the image size")
    if normalization is None:
        info = engine.input
        if info.quantized and info.dtype == np.uint8:
            # Quantized uint8 input: feed raw pixels, as pycoral does; the model's own
            # input quantization (scale, zero point) then is its normalisation.
            spec = Preprocessing.named("raw", size, resize or "stretch", interpolation=interpolation or "area")
            mean = info.zero_point * info.scale
            return replace(spec, normalization="quantized-input", scale=info.scale, mean=(mean, mean, mean))
        raise OptionError(
            f"{path}: no manifest and a float input; pass a normalization "
            "(tf: [-1,1], torch: ImageNet mean/std, caffe: BGR mean, unit: [0,1], raw: 0..255)"
        )
    return Preprocessing.named(normalization, size, resize or "stretch", interpolation=interpolation or "area")


def _embedded_manifest(engine: Engine, path: Path) -> Manifest | None:
    """A manifest embedded in the model file itself (ONNX metadata_props, OpenVINO rt_info)."""
    text = getattr(engine, "metadata", {}).get("edgecls.manifest") or getattr(engine, "rt_info", {}).get("manifest")
    if not text:
        return None
    import json

    try:
        return Manifest.from_dict(json.loads(text), f"{path} (embedded metadata)")
    except (json.JSONDecodeError, ModelError):
        return None


def open_artifact(path: str | Path, verify_checksum: bool = True, **engine_options: Any) -> tuple[Engine, Manifest | None]:
    """Open a model file with its engine after checking it against its manifest: the checksums
    (model file and companions such as OpenVINO's .bin) before the engine reads it, the model's
    structure (tensor shapes, types, quantization, label count) after. Every loader goes through here."""
    path = Path(path)
    sidecar = load_manifest(path)
    if sidecar is not None and verify_checksum and path.is_file():
        verify_checksums(path, sidecar)
    engine = open_engine(path, **engine_options)
    if sidecar is not None and verify_checksum and sidecar.artifact_sha256:
        unchecked = [f for f in getattr(engine, "external_data", []) if Path(f).as_posix() not in sidecar.companions]
        if unchecked:
            raise ModelError(f"{path}: its external data file {unchecked[0]!r} is not covered by the manifest's "
                             f"checksums; re-export it (or write the manifest again with Manifest.save)")
    manifest = sidecar or _embedded_manifest(engine, path)
    if manifest is not None:
        check_structure(manifest, engine, path)
    return engine, manifest


def _mismatch(path: Path, what: str, said: Any, actual: Any) -> ModelError:
    return ModelError(f"{path}: the model does not match its manifest: the manifest says {what} {said}, "
                      f"the model has {actual}; re-export it or remove the stale manifest")


def _same_dims(said: Sequence[int], actual: Sequence[int]) -> bool:
    """Shapes agree apart from the batch dimension and dynamic (-1) dimensions."""
    return len(said) == len(actual) and all(a == b or a == -1 or b == -1 for a, b in zip(said[1:], actual[1:]))


def check_structure(manifest: Manifest, engine: Engine, path: Path) -> None:
    """Cross-check the model's input/output tensors and class count against its manifest."""
    for side, info in (("input", engine.input), ("output", engine.output)):
        said = manifest.input if side == "input" else manifest.output
        shape = said.get("shape")
        if shape and not _same_dims(shape, info.shape):
            raise _mismatch(path, f"{side} shape", list(shape), list(info.shape))
        dtype = said.get("dtype")
        if dtype and dtype != np.dtype(info.dtype).name:
            raise _mismatch(path, f"{side} type", dtype, np.dtype(info.dtype).name)
        if "quantization" in said and dtype:
            q = said["quantization"]
            actual = {"scale": info.scale, "zero_point": info.zero_point} if info.quantized else None
            if (q is None) != (actual is None) or (q is not None and actual is not None and (
                    q["zero_point"] != actual["zero_point"]
                    or not np.isclose(q["scale"], actual["scale"], rtol=1e-5, atol=0))):
                raise _mismatch(path, f"{side} quantization", q, actual)
    classes = int(engine.output.shape[-1])
    if classes > 0 and len(manifest.labels) != classes:
        raise _mismatch(path, "labels for", f"{len(manifest.labels)} classes", f"{classes} outputs")
    shape = engine.input.shape
    if len(shape) == 4:
        size = (shape[2], shape[3]) if shape[1] == 3 and shape[3] != 3 else (shape[1], shape[2])
        if min(size) > 0 and tuple(manifest.preprocessing.size) != tuple(size):
            raise _mismatch(path, "images are resized to", "x".join(map(str, manifest.preprocessing.size)),
                            "an input of " + "x".join(map(str, size)))
