"""Class imbalance: counts before training, a warning for tiny classes, oversampling, and the
metrics that stay honest when classes differ in size (balanced accuracy, per-class P/R/F1).

numpy only at import; scikit-learn (a training dependency) inside `imbalance_metrics`.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

TINY_CLASS = 10          # fewer training images than this: the class is learnt from a handful
IMBALANCE_RATIO = 3.0    # largest / smallest class above this: accuracy hides the small classes


def class_count_warnings(labels: Sequence[str], counts: Sequence[int]) -> list[str]:
    """Warnings for classes too small to learn or validate, and for a strong imbalance."""
    counts = np.asarray(counts)
    out = []
    tiny = [f"{label} ({int(c)})" for label, c in zip(labels, counts) if c < TINY_CLASS]
    if tiny:
        out.append(f"tiny classes, fewer than {TINY_CLASS} training images: {', '.join(tiny)}; their accuracy "
                   "will be noisy; add images, or try --oversample or --class-weights")
    if counts.min() > 0 and counts.max() / counts.min() > IMBALANCE_RATIO:
        out.append(f"classes are imbalanced ({int(counts.max())} vs {int(counts.min())} training images): judge by "
                   "balanced accuracy and per-class recall, and consider --oversample or --class-weights")
    return out


def report_class_counts(labels: Sequence[str], train_targets: np.ndarray, console) -> list[str]:
    """Print the training images per class (before training starts) and any warnings; returns them."""
    from rich.markup import escape

    counts = np.bincount(np.asarray(train_targets, dtype=np.int64), minlength=len(labels))
    console.print("training images per class: " + ", ".join(f"{escape(str(label))} {int(c)}"
                                                             for label, c in zip(labels, counts)), highlight=False)
    warnings = class_count_warnings(labels, counts)
    for w in warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    return warnings


def oversampled(indices: np.ndarray, targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """Training indices with each class's images drawn again (without replacement first, so every
    image appears) until every class has as many as the largest; order is left to the feeder."""
    indices = np.asarray(indices)
    classes, counts = np.unique(targets[indices], return_counts=True)
    rng = np.random.default_rng(seed)
    most = counts.max()
    out = []
    for c, n in zip(classes, counts):
        members = indices[targets[indices] == c]
        extra = most - n
        repeats = np.concatenate([rng.permutation(members) for _ in range(extra // n + 1)])[:extra] if extra else []
        out.append(np.concatenate([members, np.asarray(repeats, dtype=indices.dtype)]))
    return np.sort(np.concatenate(out))


def imbalance_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro F1 and per-class precision/recall/F1/support (scikit-learn)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, precision_recall_fscore_support

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    ids = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=ids, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {str(label): {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, label in enumerate(labels)},
    }
