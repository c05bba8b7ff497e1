"""Class activation maps on the device: numpy and OpenCV (plus the artifact's own engine) only.

An artifact exported with a second output — the backbone's last feature map — and the weights of
its final dense layer (a sidecar ``ARTIFACT.cam.npz``) is enough to say where in the picture the
model saw its class: CAM_c(y, x) = sum_k W[k, c] * F[y, x, k] (Zhou et al. 2016). For a global
average pooling + dense head this is, up to a constant factor, exactly what Grad-CAM computes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ModelError, OptionError
from .preprocess import Preprocessing, center_window

CAM_SUFFIX = ".cam.npz"


def cam_weights_path(artifact: str | Path) -> Path:
    """Where the dense-layer weights of an artifact's CAM live (``model.tflite.cam.npz``)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + CAM_SUFFIX)


def save_cam_weights(artifact: str | Path, kernel: np.ndarray) -> Path:
    """Write the final dense kernel (channels, classes) beside an artifact, atomically."""
    import io

    from .files import atomic_write_bytes

    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2:
        raise OptionError(f"a CAM kernel must be 2-D (channels, classes), got shape {kernel.shape}")
    buf = io.BytesIO()
    np.savez(buf, kernel=kernel)
    path = cam_weights_path(artifact)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_cam_weights(artifact: str | Path) -> np.ndarray:
    """The dense kernel (channels, classes) saved beside an artifact."""
    path = cam_weights_path(artifact)
    if not path.is_file():
        raise ModelError(f"{path}: no CAM weights beside {Path(artifact).name}; export with the explain option")
    try:
        with np.load(path) as z:
            kernel = np.asarray(z["kernel"], dtype=np.float32)
    except (OSError, KeyError, ValueError) as exc:
        raise ModelError(f"{path}: not a CAM weights file ({exc})") from None
    if kernel.ndim != 2:
        raise ModelError(f"{path}: CAM kernel has shape {kernel.shape}, expected (channels, classes)")
    return kernel


def class_activation_map(feature_map: np.ndarray, dense_kernel_for_class: np.ndarray) -> np.ndarray:
    """CAM of one class: the feature map (H, W, C) weighted by that class's dense weights (C,).

    Returns the raw (H, W) float32 map; `normalize_map` scales it to [0, 1] for display.
    """
    fmap = np.asarray(feature_map, dtype=np.float32)
    w = np.asarray(dense_kernel_for_class, dtype=np.float32).reshape(-1)
    if fmap.ndim == 4 and fmap.shape[0] == 1:
        fmap = fmap[0]
    if fmap.ndim != 3 or fmap.shape[-1] != w.shape[0]:
        raise OptionError(f"feature map {fmap.shape} and class weights {w.shape} do not match: "
                          "expected (H, W, C) and (C,)")
    return fmap @ w


def normalize_map(cam: np.ndarray) -> np.ndarray:
    """Positive evidence only, scaled to [0, 1] (all zeros when there is none)."""
    cam = np.maximum(np.asarray(cam, dtype=np.float32), 0.0)
    peak = float(cam.max()) if cam.size else 0.0
    return cam / peak if peak > 0 else np.zeros_like(cam)


def model_window(shape: tuple[int, ...], preprocessing: Preprocessing) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the part of an (H, W) picture the model saw."""
    h, w = int(shape[0]), int(shape[1])
    if preprocessing.resize != "center_crop" or (h, w) == tuple(preprocessing.size):
        return 0, 0, h, w
    ph, pw = preprocessing.size
    probe = np.empty((h, w, 1), dtype=np.uint8)
    win = center_window(probe, ph / pw, preprocessing.crop_fraction)
    return (h - win.shape[0]) // 2, (w - win.shape[1]) // 2, win.shape[0], win.shape[1]


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """A coarse map resized bilinearly to (height, width), as float32."""
    import cv2

    return cv2.resize(np.ascontiguousarray(cam, dtype=np.float32), (int(width), int(height)),
                      interpolation=cv2.INTER_LINEAR)


def heat_on_picture(rgb: np.ndarray, cam: np.ndarray, preprocessing: Preprocessing | None = None) -> np.ndarray:
    """A normalised (H', W') map laid over the part of the picture the model saw, as an (H, W)
    float map in [0, 1] (zero outside the model's window)."""
    top, left, h, w = model_window(rgb.shape, preprocessing) if preprocessing else (0, 0, *rgb.shape[:2])
    heat = np.zeros(rgb.shape[:2], dtype=np.float32)
    heat[top : top + h, left : left + w] = np.clip(upsample(normalize_map(cam), h, w), 0.0, 1.0)
    return heat


def overlay(rgb: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The picture with a JET-coloured heat map (H, W in [0, 1]) blended over it (RGB uint8)."""
    import cv2

    if not 0 <= alpha <= 1:
        raise OptionError(f"alpha must be in [0, 1], got {alpha}")
    colored = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    blended = rgb.astype(np.float32) * (1 - alpha) + colored.astype(np.float32) * alpha
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def write_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Encode an RGB picture as PNG and write it atomically."""
    import cv2

    from .files import atomic_write_bytes

    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OptionError(f"{path}: could not encode the overlay as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return Path(path)


@dataclass
class CamOutputs:
    probabilities: np.ndarray   # (classes,)
    feature_map: np.ndarray     # (H, W, C), dequantized


class FeatureMapRunner:
    """Runs an artifact that has the explain output (probabilities + last feature map) through
    its engine (`engine`, or one opened for `path`), which returns every output."""

    def __init__(self, path: str | Path, num_classes: int, engine=None):
        from .engines import open_engine

        self.path = Path(path)
        self.num_classes = num_classes
        self.engine = engine if engine is not None else open_engine(self.path)
        ranks = [len(info.shape) for info in self.engine.outputs]
        if sorted(ranks) != [2, 4]:
            raise ModelError(f"{self.path}: expected two outputs (probabilities and a feature map) for CAM, found "
                             f"output shapes {[list(info.shape) for info in self.engine.outputs]}; export with the "
                             "explain option")
        self._prob_index, self._fmap_index = ranks.index(2), ranks.index(4)

    def run(self, model_input: np.ndarray) -> CamOutputs:
        """One prepared input (H, W, 3) in the engine's dtype -> probabilities and feature map."""
        from .runtime import dequantize

        raw = self.engine.run_all(np.ascontiguousarray(model_input[None]))
        outs = [dequantize(r, info.scale, info.zero_point) if info.quantized else np.asarray(r, dtype=np.float32)
                for r, info in zip(raw, self.engine.outputs)]
        return CamOutputs(outs[self._prob_index].reshape(-1), outs[self._fmap_index][0])


def explain_artifact(classifier, image_path: str | Path, out_dir: str | Path,
                     class_name: str | None = None) -> dict:
    """Predict one image with an exported artifact and write its CAM overlay PNG.

    `classifier` is a `runtime.Classifier` for the artifact (it prepares the input exactly as
    for prediction). Returns the predicted label, the explained label and the overlay path.
    """
    from .preprocess import read_rgb
    from .runtime import softmax

    labels = list(classifier.labels)
    kernel = _kernel(classifier.path, len(labels))
    runner = FeatureMapRunner(classifier.path, len(labels), classifier.engine)  # the classifier's own engine
    rgb = read_rgb(image_path)
    outs = runner.run(classifier.prepare(rgb))
    # The activation the classifier decided when the artifact was opened, never a guess from values.
    probs = softmax(outs.probabilities) if classifier.output_activation == "none" else outs.probabilities
    predicted = int(np.argmax(probs))
    if class_name is not None and class_name not in labels:
        raise OptionError(f"--class {class_name!r} is not one of the model's labels: {', '.join(labels)}")
    chosen = labels.index(class_name) if class_name is not None else predicted
    cam = class_activation_map(outs.feature_map, kernel[:, chosen])
    heat = heat_on_picture(rgb, cam, classifier.preprocessing)
    out = Path(out_dir) / f"{Path(image_path).stem}.{safe_file_name(labels[chosen])}.cam.png"
    write_png(out, overlay(rgb, heat))
    return {"image": str(image_path), "predicted": labels[predicted], "probability": float(probs[predicted]),
            "explained": labels[chosen], "overlay": str(out)}


_KERNELS: dict[str, np.ndarray] = {}


def _kernel(path: Path, num_classes: int) -> np.ndarray:
    """An artifact's CAM weights, read once per process (predict loops over images)."""
    key = str(Path(path).resolve())
    if key not in _KERNELS:
        kernel = load_cam_weights(path)
        if kernel.shape[1] != num_classes:
            raise ModelError(f"{cam_weights_path(path)}: {kernel.shape[1]} classes, the model has {num_classes}")
        _KERNELS[key] = kernel
    return _KERNELS[key]


def safe_file_name(name: str) -> str:
    """A label made safe for a file name."""
    keep = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return keep[:60] or "class"
