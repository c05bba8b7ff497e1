"""What a finished run leaves in its output folder: model.keras, labels, history, curves,
metrics and the confusion matrix, then the manifest, written last: it marks the run finished."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import data as data_mod
from ..cache import ImageCache
from ..evaluate import Metrics, compute_metrics, overfit_warning, plot_confusion
from ..files import atomic_write_json, atomic_write_text
from ..keras_model import keras_manifest, save_keras_model
from ..models import Recipe
from ..preprocess import Preprocessing
from ..runtime import finite_scores
from .config import TrainConfig, TrainResult
from .feed import TrainingData, reader
from .plots import plot_history
from .refit import estimate_metrics, estimate_record

OUTPUTS = ("model.keras.json", "model.keras", "metrics.json", "history.json", "labels.txt",
           "training_curves.png", "confusion_matrix.png")


def clear_outputs(out_dir: Path) -> None:
    """A new run first removes an earlier run's results, manifest first: whatever it leaves
    behind if killed can never pass for a finished model."""
    for name in OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)


def evaluate_split(model, images: np.ndarray | ImageCache, indices: np.ndarray, targets: np.ndarray,
                   preprocessing: Preprocessing, labels: list[str], batch_size: int = 64) -> Metrics:
    """Metrics of the inference model on cached images, normalised as the runtime does."""
    read = reader(images)
    probs = [np.asarray(model.predict_on_batch(preprocessing.normalize(read(np.sort(indices[i : i + batch_size])))))
             for i in range(0, len(indices), batch_size)]
    order = np.concatenate([np.sort(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)])
    scores = finite_scores(np.concatenate(probs), "the trained model (diverged?)")
    return compute_metrics(targets[order], scores.argmax(1), labels)


def _source(dataset: Path, config: TrainConfig, recipe: Recipe, loaded: TrainingData, training: dict) -> dict:
    return {
        "backbone": recipe.name, "weights": str(config.weights or recipe.weights),
        "dataset": str(Path(dataset).resolve()),
        # The file lists, not just (fractions, seed): photos added later must not move between splits.
        "split": {"val_fraction": config.val_fraction, "test_fraction": config.test_fraction, "seed": config.seed,
                  "files": data_mod.split_record(loaded.folder, loaded.split)},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        "training": training,
    }


def write_outputs(model, out_dir: Path, dataset: Path, config: TrainConfig, recipe: Recipe, loaded: TrainingData,
                  preprocessing: Preprocessing, history: dict, phase_boundary: int, training: dict,
                  cv_estimate: dict | None = None) -> TrainResult:
    """Save the model, evaluate it, write history, plots and metrics, and the manifest last.
    With `cv_estimate` (--refit-all: no photo held out) the "val" figures are its out-of-fold
    predictions, labelled as such in metrics.json and the manifest."""
    labels = list(loaded.folder.classes)
    model_path = save_keras_model(model, out_dir / "model.keras")
    atomic_write_text(out_dir / "labels.txt", "\n".join(labels) + "\n")
    atomic_write_json(out_dir / "history.json", {"phase_boundary": phase_boundary, **history})
    plot_history(history, phase_boundary, out_dir / "training_curves.png")
    images, targets = loaded.cache, loaded.folder.targets
    train_metrics = evaluate_split(model, images, loaded.train, targets, preprocessing, labels)
    if cv_estimate is None:
        val_metrics = evaluate_split(model, images, loaded.val, targets, preprocessing, labels)
        title, scores = "Validation confusion matrix", {"val_accuracy": val_metrics.accuracy,
                                                        "val_count": val_metrics.count}
    else:
        val_metrics = estimate_metrics(cv_estimate, labels)
        title = f"Cross-validated confusion matrix ({cv_estimate['folds']} folds, out-of-fold)"
        scores = {"cv_accuracy": cv_estimate["accuracy"], "cv_ci95": cv_estimate["ci95"],
                  "cv_count": cv_estimate["count"], "accuracy_estimate": cv_estimate["method"]}
    plot_confusion(val_metrics, out_dir / "confusion_matrix.png", title)
    warnings = [w for w in [overfit_warning(train_metrics.accuracy, val_metrics.accuracy)] if w]
    metrics = {"train": train_metrics.to_dict(), "val": val_metrics.to_dict(), "warnings": warnings}
    if training.get("fine_tune_decision"):  # both estimates, their intervals and the rule (train.decide)
        metrics["fine_tune_decision"] = training["fine_tune_decision"]
    if cv_estimate is not None:
        metrics["val"]["estimate"] = metrics["cv_estimate"] = estimate_record(cv_estimate)
    atomic_write_json(out_dir / "metrics.json", metrics)
    manifest = keras_manifest(model_path, labels, preprocessing, _source(dataset, config, recipe, loaded, training),
                              {**scores, "train_accuracy": train_metrics.accuracy})
    manifest.save(model_path)
    if config.previous:  # a new round: the previous and the new model on the same fixed test photos
        from .rounds import write_report

        metrics["rounds"] = write_report(config.previous, out_dir, loaded.folder, loaded.split, config, model_path)
    return TrainResult(model_path, out_dir, labels, metrics, history, loaded.skipped, warnings)
