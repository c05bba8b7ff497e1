"""Training-time augmentation, split where each part runs fastest.

* Cheap photometric and flip augmentation (`InModelAugment`) runs batched inside the
  training-only wrapper model, on the accelerator, after the uint8 batch leaves the host.
* Geometric augmentation (rotation, zoom) runs on the host with OpenCV `warpAffine` in the
  feeder's worker threads (OpenCV releases the GIL, so threads use all cores). Keras'
  `RandomRotation`/`RandomZoom` resample ~30x slower than a MobileNetV2 step on a GPU (issue 9),
  and on this CPU `bench/train_throughput.py --aug` measures the two formulations side by side.

Neither part is ever saved: the exported model contains no random ops (which would need
TFLite Flex ops) and the same code serves every Keras backend. Randomness is seeded per
(seed, epoch, batch) on the host and by a Keras SeedGenerator in the model, so runs reproduce.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    rotation_degrees: float = 15.0
    zoom: float = 0.1          # scale in [1 - zoom, 1 + zoom]
    contrast: float = 0.1      # contrast factor in [1 - contrast, 1 + contrast]
    brightness: float = 0.0    # added offset in [-brightness, brightness] x 255

    @property
    def geometric(self) -> bool:
        return bool(self.rotation_degrees or self.zoom)

    def warp(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Random rotation and zoom of one RGB uint8 picture (OpenCV, reflecting borders)."""
        import cv2

        h, w = image.shape[:2]
        angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees) if self.rotation_degrees else 0.0
        scale = rng.uniform(1 - self.zoom, 1 + self.zoom) if self.zoom else 1.0
        if not angle and scale == 1.0:
            return image
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        return cv2.warpAffine(np.ascontiguousarray(image), matrix, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT_101)

    def warp_batch(self, batch: np.ndarray, rng: np.random.Generator, skip: int = 0) -> np.ndarray:
        """`warp` applied to each picture of a uint8 batch (a new array). `skip`: the batch is
        a slice starting at that position of a larger one (one process's share of a global
        batch); the draws of the pictures before it are skipped, so every picture gets the
        warp it would get in the whole batch."""
        if not self.geometric:
            return batch
        for _ in range(skip * (bool(self.rotation_degrees) + bool(self.zoom))):
            rng.random()  # warp's draws are uniform(): one double each, as random() consumes
        return np.stack([self.warp(img, rng) for img in batch])

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Every augmentation on one picture on the host (reference path, used by benchmarks)."""
        out = image[:, ::-1] if self.flip and rng.random() < 0.5 else image
        out = self.warp(out, rng)
        if self.contrast:
            factor = rng.uniform(1 - self.contrast, 1 + self.contrast)
            mean = out.mean(axis=(0, 1), keepdims=True)
            out = np.clip((out.astype(np.float32) - mean) * factor + mean, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out)


def corner_crop(batch: np.ndarray, fraction: float, corner: tuple[int, int]) -> np.ndarray:
    """The `fraction` x `fraction` corner (row 0/1, column 0/1) of every uint8 picture in a batch,
    resized back to the batch's size."""
    import cv2

    h, w = batch.shape[1:3]
    ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
    y0, x0 = (h - ch) * corner[0], (w - cw) * corner[1]
    return np.stack([cv2.resize(np.ascontiguousarray(img[y0 : y0 + ch, x0 : x0 + cw]), (w, h),
                                interpolation=cv2.INTER_LINEAR) for img in batch])


def feature_views(mirror: bool, crop: float) -> dict[str, Callable[[np.ndarray], np.ndarray] | None]:
    """The fixed views of each training picture whose backbone features the feature head learns
    from: as is, mirrored (when flips are allowed) and, with `crop` > 0, its four corner crops of
    that fraction of each side (None: the picture as is). Deterministic, so features are
    computed once. On flowers-small at 224 px the four crops moved 5-fold CV accuracy from 0.860 to
    0.868 (mean over three fold seeds; the probe 0.857), bench/results/feature_head_cv_224px.md:
    a small gain, inside the fold noise, from a standard augmentation rather than a tuned one."""
    views: dict = {"as is": None}
    if mirror:
        views["mirrored"] = lambda b: b[:, :, ::-1]
    if crop:
        for name, corner in (("top left", (0, 0)), ("top right", (0, 1)), ("bottom left", (1, 0)),
                             ("bottom right", (1, 1))):
            views[f"{name} {crop:g}"] = lambda b, c=corner: corner_crop(b, crop, c)
    return views


_LAYERS: dict[str, type] = {}


def keras_layers() -> dict[str, type]:
    """The training wrapper's Keras layers, built on first use (Keras is imported lazily)."""
    if _LAYERS:
        return _LAYERS
    import keras
    from keras import ops

    class InModelAugment(keras.layers.Layer):
        """Batched random flip, brightness and contrast on 0..255 float pixels; identity unless training."""

        def __init__(self, flip=True, contrast=0.1, brightness=0.0, seed=0, **kwargs):
            # float32 whatever the mixed-precision policy: the random factors are float32, and
            # pixel arithmetic in float16 would round 0..255 values to steps of 0.125.
            kwargs["dtype"] = "float32"
            super().__init__(**kwargs)
            self.flip, self.contrast, self.brightness = flip, contrast, brightness
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=False):
            if not training:
                return x
            n = ops.shape(x)[0]
            if self.flip:
                coin = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < 0.5
                x = ops.where(coin, ops.flip(x, axis=2), x)
            if self.brightness:
                x = x + keras.random.uniform((n, 1, 1, 1), -self.brightness, self.brightness,
                                             seed=self.seed_generator) * 255.0
            if self.contrast:
                factor = keras.random.uniform((n, 1, 1, 1), 1 - self.contrast, 1 + self.contrast,
                                              seed=self.seed_generator)
                mean = ops.mean(x, axis=(1, 2), keepdims=True)
                x = (x - mean) * factor + mean
            return ops.clip(x, 0.0, 255.0) if (self.brightness or self.contrast) else x

    class Normalize(keras.layers.Layer):
        """uint8/float pixels -> model inputs, exactly as `Preprocessing.normalize` (float32)."""

        def __init__(self, scale, mean, std, bgr=False, **kwargs):
            super().__init__(dtype="float32", **kwargs)
            self.scale, self.mean, self.std, self.bgr = float(scale), list(mean), list(std), bgr

        def call(self, x):
            x = ops.cast(x, "float32")
            if self.bgr:
                x = ops.flip(x, axis=-1)
            mean = ops.convert_to_tensor(np.asarray(self.mean, np.float32))
            std = ops.convert_to_tensor(np.asarray(self.std, np.float32))
            return (x * np.float32(self.scale) - mean) / std

    class ToFloat(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(dtype="float32", **kwargs)

        def call(self, x):
            return ops.cast(x, "float32")

    _LAYERS.update(InModelAugment=InModelAugment, Normalize=Normalize, ToFloat=ToFloat)
    return _LAYERS
