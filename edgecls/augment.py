"""Training-time augmentation on RGB uint8 pictures with OpenCV: flip, rotation, zoom, contrast.

It runs in the input pipeline, never inside the model, so exported models contain no random
ops (which would need TFLite Flex ops) and the same code serves every Keras backend.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    rotation_degrees: float = 15.0
    zoom: float = 0.1          # scale in [1 - zoom, 1 + zoom]
    contrast: float = 0.1      # contrast factor in [1 - contrast, 1 + contrast]

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        h, w = image.shape[:2]
        out = image
        if self.flip and rng.random() < 0.5:
            out = out[:, ::-1]
        angle = rng.uniform(-self.rotation_degrees, self.rotation_degrees) if self.rotation_degrees else 0.0
        scale = rng.uniform(1 - self.zoom, 1 + self.zoom) if self.zoom else 1.0
        if angle or scale != 1.0:
            matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
            out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT_101)
        if self.contrast:
            factor = rng.uniform(1 - self.contrast, 1 + self.contrast)
            mean = out.mean(axis=(0, 1), keepdims=True)
            out = np.clip((out.astype(np.float32) - mean) * factor + mean, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out)
