"""--refit-all's accuracy estimate: the feature head fitted on every photo ships, so its accuracy
comes from stratified k-fold cross-validation of the same head (every view of a picture kept in
that picture's fold) on the features already computed for the refit. Each fold uses the refit's
C (chosen once, by inner CV on all photos, or given): choosing it again per fold would cost k x 16
fits, over an hour on 3,000 photos x 6 views on a 2-core host, for one hyperparameter's small
optimism. It estimates the recipe, not the shipped model: each fold's head saw (k-1)/k of the photos."""
from __future__ import annotations

import numpy as np

from .. import data as data_mod
from ..evaluate import compute_metrics, wilson_interval
from .config import TrainConfig


def cv_estimate(per_view: list[np.ndarray], targets: np.ndarray, classes: int, config: TrainConfig,
                class_weight: dict | None, c: float) -> dict:
    """Out-of-fold predictions of the feature head (`per_view[0]` is the pictures as is, the
    view scored, as the runtime sees them); accuracy with its Wilson interval, per-fold figures."""
    from ..runtime import softmax
    from .feature_head import logistic_head

    oof = np.zeros((len(targets), classes), np.float32)
    folds = []
    for i in range(config.cv_folds):
        split = data_mod.fold_indices(targets, config.cv_folds, i, seed=config.seed)
        rows = split["train"]
        x = np.concatenate([view[rows] for view in per_view])
        y = np.tile(targets[rows], len(per_view))
        pictures = np.tile(np.arange(len(rows)), len(per_view))
        kernel, bias, _ = logistic_head(x, y, classes, config.seed, class_weight, groups=pictures, c=c)
        oof[split["val"]] = softmax(per_view[0][split["val"]] @ kernel + bias)
        right = int((oof[split["val"]].argmax(1) == targets[split["val"]]).sum())
        folds.append({"fold": i, "count": int(len(split["val"])), "correct": right})
    correct = int((oof.argmax(1) == targets).sum())
    lo, hi = wilson_interval(correct, len(targets))
    chosen = "given" if config.head_c is not None else "chosen by inner CV on all photos"
    return {"method": f"{config.cv_folds}-fold cross-validation of the same recipe (fold seed {config.seed}; C={c:g}, "
                      f"the refit's, {chosen}), out-of-fold predictions pooled",
            "folds": config.cv_folds, "count": int(len(targets)), "correct": correct,
            "accuracy": correct / len(targets), "ci95": [round(lo, 4), round(hi, 4)], "per_fold": folds,
            "probabilities": oof, "targets": targets}


def estimate_metrics(estimate: dict, labels: list[str]):
    """The out-of-fold predictions as evaluate.Metrics (what a validation split would report)."""
    return compute_metrics(estimate["targets"], estimate["probabilities"].argmax(1), labels)


def estimate_record(estimate: dict) -> dict:
    """The estimate without its arrays, for metrics.json and the manifest."""
    return {k: v for k, v in estimate.items() if k not in ("probabilities", "targets")}
