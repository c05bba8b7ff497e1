"""Two-phase transfer learning with Keras 3 on an image-folder dataset.

Phase 1 trains a new head over a frozen backbone; phase 2 unfreezes the backbone's top layers
(from the recipe's `fine_tune_from`) at a lower learning rate. Augmentation runs in the input
pipeline; inputs are normalised by the runtime's own `Preprocessing.normalize`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from .augment import Augmentation
from .errors import EdgeclsError, ModelError, OptionError
from .evaluate import Metrics, compute_metrics, overfit_warning, plot_confusion
from .manifest import Manifest, atomic_write_text, load_manifest, manifest_path, sha256_file, verify_checksums
from .models import Recipe, build_feature_extractor, get_recipe, resolve_weights
from .preprocess import Preprocessing


@dataclass
class TrainConfig:
    backbone: str = "mobilenet_v2"
    weights: str | None = None          # imagenet | none | PATH; default: the recipe's
    input_size: tuple[int, int] | None = None
    epochs: int = 10                    # phase 1 (head) epochs
    fine_tune_epochs: int = 5           # phase 2 epochs; 0 skips fine-tuning
    batch_size: int = 32
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    dropout: float = 0.2
    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0
    patience: int = 3                   # early stopping on validation loss
    class_weights: bool = False
    augment: bool = True
    flip: bool = True                   # horizontal flips (wrong for digits and text)

    def validate(self) -> Recipe:
        recipe = get_recipe(self.backbone)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.fine_tune_epochs < 0:
            raise OptionError(f"fine_tune_epochs must be >= 0, got {self.fine_tune_epochs}")
        if not 0 <= self.dropout < 1:
            raise OptionError(f"dropout must be in [0, 1), got {self.dropout}")
        resolve_weights(self.weights or recipe.weights)
        return recipe


@dataclass
class TrainResult:
    model_path: Path
    out_dir: Path
    labels: list[str]
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _keras():
    try:
        import keras
    except ImportError:
        from .errors import missing_extra

        raise missing_extra("keras (and tensorflow-cpu)", "train") from None
    return keras


def build_model(recipe: Recipe, num_classes: int, input_size: tuple[int, int], weights: str | None,
                dropout: float = 0.2):
    """Backbone + new head. A pretrained backbone starts frozen and runs in inference mode (its
    batch norm statistics stay fixed); one without pretrained weights trains whole, batch norm
    included: a frozen random backbone would leave only the head to learn."""
    keras = _keras()
    backbone = build_feature_extractor(recipe, input_size, weights)
    backbone.trainable = trains_whole(recipe, weights)
    inputs = keras.Input((*input_size, 3), name="image")
    x = backbone(inputs) if backbone.trainable else backbone(inputs, training=False)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=f"edgecls_{recipe.name}"), backbone


def trains_whole(recipe: Recipe, weights: str | None) -> bool:
    """Whether the backbone trains from the start (no pretrained weights to keep)."""
    return weights is None or recipe.application == ""


def _unfreeze_top(backbone, fine_tune_from: str) -> int:
    names = [layer.name for layer in backbone.layers]
    if fine_tune_from not in names:
        raise EdgeclsError(f"recipe's fine_tune_from layer {fine_tune_from!r} is not in the backbone")
    start = names.index(fine_tune_from)
    backbone.trainable = True
    for layer in backbone.layers[:start]:
        layer.trainable = False
    for layer in backbone.layers[start:]:
        # BatchNormalization stays frozen: its statistics from ImageNet beat ones from a small set.
        layer.trainable = layer.__class__.__name__ != "BatchNormalization"
    return len(backbone.layers) - start


def _batches(images: np.ndarray, targets: np.ndarray, preprocessing: Preprocessing, batch_size: int,
             augmentation: Augmentation | None, seed: int):
    keras = _keras()

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(images)) if augmentation else np.arange(len(images))

        def __len__(self):
            return math.ceil(len(images) / batch_size)

        def __getitem__(self, i):
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            batch = images[idx]
            if augmentation is not None:
                batch = np.stack([augmentation(img, self.rng) for img in batch])
            return preprocessing.normalize(batch), targets[idx]

        def on_epoch_end(self):
            if augmentation is not None:
                self.order = self.rng.permutation(len(images))

    return Batches()


class _RichEpochs:
    """A Keras callback that shows epochs and metrics on a rich progress bar."""

    def __new__(cls, progress, phase: str, epochs: int):
        keras = _keras()

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.task = progress.add_task(phase, total=epochs, metrics="")

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                shown = " ".join(f"{k}={v:.3f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
                progress.update(self.task, advance=1, metrics=shown)

            def on_train_end(self, logs=None):
                progress.update(self.task, completed=epochs)

        return Callback()


class KerasScorer:
    """Probabilities from a saved `.keras` model for RGB uint8 pictures (already resized)."""

    def __init__(self, model_path: str | Path):
        path = Path(model_path)
        manifest = load_manifest(path)
        if manifest is None:
            raise ModelError(f"{path}: no manifest ({manifest_path(path).name}); train with edgecls or write one")
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        verify_checksums(path, manifest)
        keras = _keras()
        try:
            # safe_mode refuses archives that would run code on load (Lambda layers, custom objects).
            self.model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises a variety of errors for damaged archives
            if "safe_mode" in str(exc) or "safe mode" in str(exc):
                raise ModelError(f"{path}: refused: the model contains code that would run when it is loaded "
                                 "(such as a Lambda layer), which safe mode does not allow; rebuild it without "
                                 "such layers") from None
            raise ModelError(f"{path}: not a loadable .keras model (truncated or corrupt?): {exc}") from None
        self.manifest = manifest
        self.labels = manifest.labels
        self.preprocessing = manifest.preprocessing

    def scores_resized(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = [np.asarray(self.model.predict_on_batch(self.preprocessing.normalize(images[i : i + batch_size])))
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out).astype(np.float32)


def train(dataset: str | Path, out_dir: str | Path, config: TrainConfig, console=None) -> TrainResult:
    """Train a classifier on an image-folder dataset and save model, labels, history and plots."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = console or Console(stderr=True)
    recipe = config.validate()
    weights = resolve_weights(config.weights or recipe.weights)
    input_size = tuple(config.input_size or recipe.input_size)
    preprocessing = recipe.preprocessing(input_size)
    folder = data_mod.scan(dataset)
    split = data_mod.split_indices(folder.targets, config.val_fraction, config.test_fraction, config.seed)
    if len(split["val"]) == 0:
        raise OptionError("the validation split is empty; raise --val-fraction or add images")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keras = _keras()
    keras.utils.set_random_seed(config.seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # Same seed, same model: runs (and CI) reproduce each other exactly.
        tf.config.experimental.enable_op_determinism()

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("loading images", total=len(split["train"]) + len(split["val"]))
        tick = lambda n: progress.advance(task, n)  # noqa: E731
        train_set = data_mod.load_images(folder, split["train"], preprocessing, tick)
        val_set = data_mod.load_images(folder, split["val"], preprocessing, tick)
    skipped = train_set.skipped + val_set.skipped
    if skipped:
        console.print(data_mod.skipped_summary(skipped))
    for index, name in enumerate(folder.classes):
        if not np.any(train_set.targets == index):
            raise EdgeclsError(f"{folder.root / name}: no readable training images for class '{name}'")

    model, backbone = build_model(recipe, len(folder.classes), input_size, weights, config.dropout)
    class_weight = None
    if config.class_weights:
        counts = np.bincount(train_set.targets, minlength=len(folder.classes))
        class_weight = {i: float(len(train_set.targets) / (len(counts) * c)) for i, c in enumerate(counts) if c}
    augmentation = Augmentation(flip=config.flip) if config.augment else None
    train_batches = _batches(train_set.images, train_set.targets, preprocessing, config.batch_size, augmentation, config.seed)
    val_batches = _batches(val_set.images, val_set.targets, preprocessing, config.batch_size, None, config.seed)
    loss = keras.losses.SparseCategoricalCrossentropy()

    def fit(epochs: int, lr: float, phase: str) -> dict[str, list[float]]:
        model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss, metrics=["accuracy"])
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True)
        with Progress(*columns, TextColumn("{task.fields[metrics]}"), console=console) as progress:
            hist = model.fit(train_batches, validation_data=val_batches, epochs=epochs, verbose=0,
                             class_weight=class_weight, callbacks=[stop, _RichEpochs(progress, phase, epochs)])
        return {k: [float(v) for v in vals] for k, vals in hist.history.items()}

    history = fit(config.epochs, config.learning_rate, "phase 1 (head)")
    phase_boundary = len(history.get("loss", []))
    if config.fine_tune_epochs and trains_whole(recipe, weights):
        console.print("no fine-tuning phase: without pretrained weights the whole network trained from the start")
    elif config.fine_tune_epochs and recipe.fine_tune_from:
        unfrozen = _unfreeze_top(backbone, recipe.fine_tune_from)
        console.print(f"phase 2: fine-tuning the top {unfrozen} backbone layers from '{recipe.fine_tune_from}'")
        fine = fit(config.fine_tune_epochs, config.fine_tune_learning_rate, "phase 2 (fine-tune)")
        for k, v in fine.items():
            history.setdefault(k, []).extend(v)

    model_path = out_dir / "model.keras"
    tmp = out_dir / ".model.tmp.keras"
    model.save(tmp)
    tmp.replace(model_path)
    labels = list(folder.classes)
    atomic_write_text(out_dir / "labels.txt", "\n".join(labels) + "\n")
    atomic_write_text(out_dir / "history.json", json.dumps({"phase_boundary": phase_boundary, **history}, indent=2))
    plot_history(history, phase_boundary, out_dir / "training_curves.png")

    def evaluate(images, targets) -> Metrics:
        probs = np.concatenate([np.asarray(model.predict_on_batch(preprocessing.normalize(images[i : i + 64])))
                                for i in range(0, len(images), 64)])
        return compute_metrics(targets, probs.argmax(1), labels)

    train_metrics, val_metrics = evaluate(train_set.images, train_set.targets), evaluate(val_set.images, val_set.targets)
    plot_confusion(val_metrics, out_dir / "confusion_matrix.png", "Validation confusion matrix")
    warnings = [w for w in [overfit_warning(train_metrics.accuracy, val_metrics.accuracy)] if w]
    metrics = {"train": train_metrics.to_dict(), "val": val_metrics.to_dict(), "warnings": warnings}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    manifest = Manifest(
        format="keras", quantization="fp32", labels=labels, preprocessing=preprocessing,
        input={"name": "image", "shape": [-1, *input_size, 3], "dtype": "float32", "layout": "NHWC", "quantization": None},
        output={"name": "probabilities", "shape": [-1, len(labels)], "dtype": "float32", "activation": "softmax"},
        source={
            "backbone": recipe.name, "weights": str(config.weights or recipe.weights),
            "dataset": str(Path(dataset).resolve()),
            # The file lists, not just (fractions, seed): photos added later must not move between splits.
            "split": {"val_fraction": config.val_fraction, "test_fraction": config.test_fraction, "seed": config.seed,
                      "files": data_mod.split_record(folder, split)},
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
        },
        artifact_sha256=sha256_file(model_path),
        verification={"val_accuracy": val_metrics.accuracy, "train_accuracy": train_metrics.accuracy,
                      "val_count": val_metrics.count},
    )
    manifest.save(model_path)
    return TrainResult(model_path, out_dir, labels, metrics, history, skipped, warnings)


def plot_history(history: dict[str, list[float]], phase_boundary: int, path: str | Path) -> Path:
    """Loss and accuracy curves for training and validation, with the fine-tuning start marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("loss", "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            values = history.get(prefix + key)
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker="o", ms=3,
                        label=("validation " if prefix else "training ") + key)
        if 0 < phase_boundary < len(history.get(key, [])):
            ax.axvline(phase_boundary + 0.5, color="gray", linestyle=":", label="fine-tuning starts")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
