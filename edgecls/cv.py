"""Stratified k-fold cross-validation: an estimate (mean ± std over folds) that one small
validation split cannot give. Each fold trains with `edgecls.train` on k-1 folds and validates
on the held-out one; the frozen linear probe (backbone features once, logistic regression per
fold) is the fast baseline every recipe must beat."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import checks
from .data import fold_indices
from .evaluate import SMALL_SPLIT, save_figure, wilson_interval
from .files import atomic_write_text
from .outputs import refuse_overlaps

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")


def check_folds(folds: int) -> None:
    """Cross-validation needs at least two folds (checked before features are computed or models trained)."""
    checks.at_least("folds", folds, 2)


def scores_from_confusion(confusion: Sequence[Sequence[int]], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 (scikit-learn) from a confusion matrix."""
    from .imbalance import imbalance_metrics

    cm = np.asarray(confusion, dtype=np.int64)
    true = np.repeat(np.arange(cm.shape[0]), cm.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(cm.shape[1]), row) for row in cm]) if cm.size else np.zeros(0, int)
    m = imbalance_metrics(true, pred, labels)
    return {k: m[k] for k in METRICS}


@dataclass
class CVResult:
    name: str
    folds: list[dict[str, Any]]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        s = self.summary
        return (f"{self.name}: accuracy {s['accuracy']['mean']:.3f} ± {s['accuracy']['std']:.3f}, "
                f"macro F1 {s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f}, "
                f"balanced accuracy {s['balanced_accuracy']['mean']:.3f} ± {s['balanced_accuracy']['std']:.3f} "
                f"({len(self.folds)} folds)")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation of each metric over folds."""
    out = {}
    for k in METRICS:
        values = np.asarray([r[k] for r in rows], dtype=np.float64)
        out[k] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return out


def cross_validate(dataset: str | Path, out_dir: str | Path, config, folds: int = 5, console=None,
                   name: str = "train", on_fold: Callable[[dict], None] | None = None) -> CVResult:
    """Train `config` (an edgecls.train.TrainConfig) once per fold; validation scores per fold."""
    from .train import train

    check_folds(folds)
    config.validate()
    from . import data as data_mod

    fold_indices(data_mod.scan(dataset).targets, folds, 0, config.seed)  # dataset checks before any training
    out_dir = Path(out_dir)
    refuse_overlaps({"dataset": dataset}, folders={"--out": out_dir})
    rows = []
    for i in range(folds):
        fold_config = dataclasses.replace(config, fold=[folds, i])
        result = train(dataset, out_dir / f"fold_{i}", fold_config, console=console)
        val = result.metrics["val"]
        row = {"fold": i, "count": int(val["count"]), **scores_from_confusion(val["confusion_matrix"], result.labels),
               "train_accuracy": float(result.metrics["train"]["accuracy"]), "model": str(result.model_path)}
        rows.append(row)
        if on_fold:
            on_fold(row)
    return _finish(name, rows, out_dir, {"dataset": str(dataset), "folds": folds,
                                         "config": dataclasses.asdict(config)})


def probe_features(dataset: str | Path, backbone: str = "mobilenet_v2", weights: str | None = None,
                   input_size: tuple[int, int] | None = None, batch_size: int = 32, resize: str | None = None):
    """Globally pooled backbone features of every readable image, computed once: (features, targets, labels)."""
    from . import data as data_mod
    from .models import build_feature_extractor, get_recipe, resolve_weights

    recipe = get_recipe(backbone)
    size = tuple(input_size or recipe.input_size)
    pre = recipe.preprocessing(size, resize)
    folder = data_mod.scan(dataset)
    loaded = data_mod.load_images(folder, np.arange(len(folder)), pre)
    extractor = build_feature_extractor(recipe, size, resolve_weights(weights or recipe.weights))
    feats = []
    for i in range(0, len(loaded.images), batch_size):
        f = np.asarray(extractor.predict_on_batch(pre.normalize(loaded.images[i : i + batch_size])))
        feats.append(f.mean(axis=(1, 2)) if f.ndim == 4 else f)
    return np.concatenate(feats).astype(np.float32), loaded.targets, list(folder.classes)


def probe_cv(features: np.ndarray, targets: np.ndarray, labels: Sequence[str], folds: int = 5, seed: int = 0,
             out_dir: str | Path | None = None, class_weight: str | None = None, name: str = "linear probe") -> CVResult:
    """The frozen linear probe: standardised features, logistic regression, per fold."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from .imbalance import imbalance_metrics

    check_folds(folds)
    rows = []
    for i in range(folds):
        split = fold_indices(targets, folds, i, seed)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight=class_weight))
        clf.fit(features[split["train"]], targets[split["train"]])
        pred = clf.predict(features[split["val"]])
        m = imbalance_metrics(targets[split["val"]], pred, labels)
        rows.append({"fold": i, "count": int(len(split["val"])), **{k: m[k] for k in METRICS},
                     "train_accuracy": float(clf.score(features[split["train"]], targets[split["train"]]))})
    if out_dir is None:
        return CVResult(name, rows, summarize(rows))
    return _finish(name, rows, Path(out_dir), {"folds": folds, "seed": seed})


def _finish(name: str, rows: list[dict], out_dir: Path, meta: dict) -> CVResult:
    result = CVResult(name, rows, summarize(rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {"name": name, **meta, "folds_table": rows, "summary": result.summary}
    atomic_write_text(out_dir / "cv.json", json.dumps(payload, indent=2, default=str, allow_nan=False) + "\n")
    atomic_write_text(out_dir / "cv.md", markdown_table(result))
    result.paths = {"json": str(out_dir / "cv.json"), "md": str(out_dir / "cv.md"),
                    "png": str(plot_folds(result, out_dir / "cv.png"))}
    return result


def markdown_table(result: CVResult) -> str:
    """Per-fold table with the mean ± std row."""
    lines = [f"# Cross-validation: {result.name}", "", "| fold | images | accuracy | balanced acc | macro F1 | train acc |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result.folds:
        lines.append(f"| {r['fold']} | {r['count']} | {r['accuracy']:.3f} | {r['balanced_accuracy']:.3f} | "
                     f"{r['macro_f1']:.3f} | {r['train_accuracy']:.3f} |")
    s = result.summary
    lines.append(f"| mean ± std | {sum(r['count'] for r in result.folds)} | {s['accuracy']['mean']:.3f} ± "
                 f"{s['accuracy']['std']:.3f} | {s['balanced_accuracy']['mean']:.3f} ± {s['balanced_accuracy']['std']:.3f} | "
                 f"{s['macro_f1']['mean']:.3f} ± {s['macro_f1']['std']:.3f} | |")
    return "\n".join(lines) + "\n"


def plot_folds(result: CVResult, path: str | Path) -> Path:
    """Per-fold accuracy and macro F1 bars with their means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folds = [r["fold"] for r in result.folds]
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(folds) + 2), 3.6))
    x = np.arange(len(folds))
    for offset, key, color in ((-0.2, "accuracy", "tab:blue"), (0.2, "macro_f1", "tab:orange")):
        values = [r[key] for r in result.folds]
        ax.bar(x + offset, values, width=0.38, color=color, label=f"{key.replace('_', ' ')} "
               f"{result.summary[key]['mean']:.3f} ± {result.summary[key]['std']:.3f}")
        ax.axhline(result.summary[key]["mean"], color=color, linestyle="--", linewidth=1)
    ax.set_xticks(x, [f"fold {f}" for f in folds])
    ax.set_ylim(0, 1.2)  # room above the bars for the legend
    ax.set_title(f"{result.name}: {len(folds)}-fold cross-validation")
    ax.legend(loc="upper center", ncol=2, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def small_split_note(accuracy: float, count: int) -> str | None:
    """A note for training summaries when the validation split is too small to trust, else None."""
    if count >= SMALL_SPLIT:
        return None
    low, high = wilson_interval(round(accuracy * count), count)
    return (f"the validation split has only {count} images: accuracy {accuracy:.3f} means anywhere from {low:.3f} "
            f"to {high:.3f} (95% interval), too wide to rank recipes; run `edgecls cv DATASET --folds 5` for a "
            "mean ± std over folds")
