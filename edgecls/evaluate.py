"""Classification metrics (numpy) and their plots. Works for any scorer: a Keras model or an
artifact through the runtime, so every format is measured the same way."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import DatasetError

OVERFIT_GAP = 0.10  # train accuracy this far above validation accuracy earns a warning


@dataclass
class Metrics:
    labels: list[str]
    confusion: np.ndarray  # rows: true class, columns: predicted class
    count: int

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.confusion.sum()))

    def per_class(self) -> dict[str, dict[str, float]]:
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
        denom = precision + recall
        f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
        return {
            label: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for label, p, r, f, s in zip(self.labels, precision, recall, f1, actual)
        }

    def absent(self) -> list[str]:
        """Labels with no images in the evaluated set: left out of the macro averages."""
        return [label for label, n in zip(self.labels, self.confusion.sum(axis=1)) if n == 0]

    def macro(self) -> dict[str, float]:
        """Unweighted mean over the classes that have images (see `absent`)."""
        rows = [v for v in self.per_class().values() if v["support"] > 0]
        return {k: float(np.mean([r[k] for r in rows])) if rows else 0.0 for k in ("precision", "recall", "f1")}

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "accuracy": self.accuracy,
            "macro": self.macro(),
            "macro_excludes": self.absent(),
            "per_class": self.per_class(),
            "labels": self.labels,
            "confusion_matrix": self.confusion.tolist(),
        }


def compute_metrics(targets: Sequence[int], predictions: Sequence[int], labels: Sequence[str]) -> Metrics:
    """Confusion matrix of model output indices; an empty set is a DatasetError, not accuracy 0 or 1."""
    if len(targets) == 0:
        raise DatasetError("no images to evaluate")
    n = len(labels)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return Metrics(list(labels), cm, int(len(targets)))


def agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> dict[str, float]:
    """How closely two models' probabilities match: top-1 agreement and the largest difference."""
    return {
        "top1_agreement": float(np.mean(probs_a.argmax(1) == probs_b.argmax(1))),
        "max_prob_diff": float(np.abs(probs_a - probs_b).max()),
    }


def overfit_warning(train_accuracy: float, val_accuracy: float, gap: float = OVERFIT_GAP) -> str | None:
    if train_accuracy - val_accuracy > gap:
        return (f"train accuracy {train_accuracy:.3f} is {train_accuracy - val_accuracy:.3f} above validation "
                f"accuracy {val_accuracy:.3f}: the model is overfitting (more data, augmentation or "
                "regularisation would help)")
    return None


MAX_PLOTTED_CLASSES = 60  # beyond this, only the classes that occur are drawn, without cell counts


def plot_confusion(metrics: Metrics, path: str | Path, title: str = "Confusion matrix") -> Path:
    """A row-normalised confusion matrix PNG (large label sets: the classes that occur only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm, labels = metrics.confusion, metrics.labels
    if len(labels) > MAX_PLOTTED_CLASSES:
        # An ImageNet model has 1000 classes; a dataset of a few would otherwise make a figure of
        # hundreds of inches (gigabytes of pixels).
        keep = np.flatnonzero((cm.sum(axis=0) + cm.sum(axis=1)) > 0)
        cm, labels = cm[np.ix_(keep, keep)], [labels[i] for i in keep]
        title += f" ({len(labels)} of {len(metrics.labels)} classes occur)"
    n = len(labels)
    size = min(40.0, max(4.0, 0.55 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    row_sums = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, row_sums, out=np.zeros(cm.shape, dtype=float), where=row_sums > 0)
    ax.imshow(normalized, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {metrics.accuracy:.3f} on {metrics.count} images")
    if n <= MAX_PLOTTED_CLASSES:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                            color="white" if normalized[i, j] > 0.5 else "black", fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SMALL_SPLIT = 200  # below this many held-out images one split's accuracy is a rough guide only


def wilson_interval(correct: int, count: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion `correct` / `count` (sound near 0 and 1)."""
    if count <= 0:
        return 0.0, 1.0
    p = correct / count
    denom = 1 + z * z / count
    centre = (p + z * z / (2 * count)) / denom
    half = z * np.sqrt(p * (1 - p) / count + z * z / (4 * count * count)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def paired_difference(a_correct: Sequence[bool], b_correct: Sequence[bool], z: float = 1.96) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the same items, each item scored by both.

    Pairing is what makes a 1-2 point difference visible on a thousand photos: only the items one
    gets right and the other wrong count. Returns the difference, its 95% interval (Agresti-Min:
    Wald with half an item added to each cell, sound with few discordant items), McNemar's exact
    two-sided p, and the discordant counts `a_only`, `b_only`."""
    import math

    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape or a.size == 0:
        raise DatasetError(f"paired comparison needs two equally long, non-empty results, got {a.shape} and {b.shape}")
    n = a.size
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    ao, bo, nn = a_only + 0.5, b_only + 0.5, n + 2.0
    centre = (ao - bo) / nn
    half = z * math.sqrt(max(0.0, (ao + bo) - (ao - bo) ** 2 / nn)) / nn
    discordant, fewer = a_only + b_only, min(a_only, b_only)
    tail = sum(math.comb(discordant, i) for i in range(fewer + 1))
    p_value = min(1.0, 2 * tail / 2**discordant) if discordant else 1.0
    return {"difference": (a_only - b_only) / n, "low": max(-1.0, centre - half), "high": min(1.0, centre + half),
            "p_value": p_value, "a_only": a_only, "b_only": b_only, "count": n}


def format_metrics(metrics: Metrics) -> str:
    """A plain-text table of per-class precision/recall/F1 with macro averages."""
    width = max(10, *(len(label) for label in metrics.labels))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for label, row in metrics.per_class().items():
        lines.append(f"{label:<{width}}  {row['precision']:9.3f}  {row['recall']:6.3f}  {row['f1']:5.3f}  {row['support']:7d}")
    m = metrics.macro()
    lines.append(f"{'macro avg':<{width}}  {m['precision']:9.3f}  {m['recall']:6.3f}  {m['f1']:5.3f}  {metrics.count:7d}")
    lines.append(f"accuracy {metrics.accuracy:.4f}")
    if metrics.absent():
        lines.append(f"WARNING: no images for {len(metrics.absent())} class(es), left out of the macro "
                     f"averages: {', '.join(metrics.absent())}")
    return "\n".join(lines)
