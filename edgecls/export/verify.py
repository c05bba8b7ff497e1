"""The images an export is verified on, and the statistics its gate judges.

A 40-photo validation split makes a gate decision one photo's coin flip (one flip is 2.5
points). When validation is small, the training images that calibration did not see join it:
they are as new to the quantizer as validation photos, and agreement between an artifact and
the Keras model measures fidelity, not generalisation, so they count for it fully.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import data as data_mod
from ..evaluate import SMALL_SPLIT, wilson_interval


@dataclass
class VerificationSet:
    images: np.ndarray       # resized RGB uint8
    targets: np.ndarray
    val_count: int           # the first `val_count` images are the validation split
    calibration: np.ndarray | None   # resized RGB uint8 calibration images (None: not needed)

    @property
    def count(self) -> int:
        return len(self.targets)

    def describe(self) -> str:
        extra = self.count - self.val_count
        return (f"{self.count} images ({self.val_count} validation"
                + (f" + {extra} training images calibration did not use)" if extra else ")"))


def choose_images(folder, split: dict[str, np.ndarray], preprocessing, calibration_count: int,
                  need_calibration: bool, calibration_images: np.ndarray | None) -> VerificationSet:
    """Validation images, calibration images from the training split, and, when validation is
    small, the training images left over from calibration for verification."""
    val = data_mod.load_images(folder, split["val"], preprocessing)
    train_idx = np.asarray(split["train"], dtype=np.int64)
    small = len(val.targets) < SMALL_SPLIT  # then calibration-disjoint training images join
    calib_idx = np.asarray([], dtype=np.int64)
    if need_calibration and calibration_images is None and len(train_idx):
        # Calibration keeps at least half of a small training split for verification; min/max
        # calibration ranges settle within ~100 images, so fewer costs it little.
        count = min(calibration_count, max(len(train_idx) // 2, 1)) if small else calibration_count
        calib_idx = train_idx[data_mod.take_per_class(folder.targets[train_idx], count, seed=1)]
    calibration = None
    if len(calib_idx):
        calibration = data_mod.load_images(folder, calib_idx, preprocessing).images
    elif need_calibration:
        calibration = calibration_images
    images, targets = val.images, val.targets
    if small:
        extra_idx = np.setdiff1d(train_idx, calib_idx)
        if len(extra_idx):
            extra = data_mod.load_images(folder, extra_idx, preprocessing)
            images = np.concatenate([val.images, extra.images])
            targets = np.concatenate([val.targets, extra.targets])
    return VerificationSet(images, targets, len(val.targets), calibration)


def compare(reference: np.ndarray, probs: np.ndarray, targets: np.ndarray, val_count: int) -> dict:
    """Accuracy of both models, the drop, top-1 agreement with its interval, largest |dp|."""
    same = probs.argmax(1) == reference.argmax(1)
    ref_ok, art_ok = reference.argmax(1) == targets, probs.argmax(1) == targets
    lo, hi = wilson_interval(int(same.sum()), len(same))
    return {
        "count": int(len(targets)), "val_count": int(val_count),
        "accuracy": float(art_ok.mean()), "reference_accuracy": float(ref_ok.mean()),
        "accuracy_drop_pp": round(float(ref_ok.mean() - art_ok.mean()) * 100, 4),
        "val_accuracy": float(art_ok[:val_count].mean()) if val_count else None,
        "val_reference_accuracy": float(ref_ok[:val_count].mean()) if val_count else None,
        "top1_agreement": float(same.mean()), "agreement_ci95": [round(lo, 4), round(hi, 4)],
        "disagreements": int((~same).sum()),
        "max_prob_diff": float(np.abs(reference - probs).max()),
    }


@dataclass(frozen=True)
class Gate:
    """What an artifact must show to be kept."""

    max_accuracy_drop: float            # points, on the verification set
    min_agreement: float | None = None  # top-1 agreement with the Keras model

    def failure(self, stats: dict) -> str | None:
        """Why `compare`'s statistics fail the gate, or None when they pass."""
        if stats["accuracy_drop_pp"] > self.max_accuracy_drop:
            return (f"accuracy gate failed: {stats['accuracy']:.4f} vs Keras {stats['reference_accuracy']:.4f} "
                    f"on {stats['count']} images is a drop of {stats['accuracy_drop_pp']:.2f} pp, more than the "
                    f"allowed {self.max_accuracy_drop:.2f} pp")
        if self.min_agreement is not None and stats["top1_agreement"] < self.min_agreement:
            return (f"agreement gate failed: top-1 agreement {stats['top1_agreement']:.4f} on {stats['count']} images "
                    f"is below the required {self.min_agreement:.4f}")
        return None
