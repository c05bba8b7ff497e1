"""Two-phase transfer learning with Keras 3 on an image-folder dataset.

`train()` is four steps, each its own function: `load_data` (scan, split, decode-once cache),
`fit_phase` (phase 1 trains a new head over the frozen backbone; phase 2 unfreezes the
backbone's top layers from the recipe's `fine_tune_from` at a lower learning rate),
`save_model` (the float32 inference model, atomically, manifest last) and `evaluate_split`.

Feeding: batches leave the host as uint8 slices of the memory-mapped cache (edgecls.cache),
prefetched by worker threads that also apply the geometric augmentation; normalisation
(`Preprocessing`'s, as a layer), flips and brightness/contrast run batched inside a
training-only wrapper around the inference model. Only the inference model is saved, so the
saved model and every export have float32 inputs normalised by `Preprocessing.normalize` and
contain no random ops.

Resume: after every epoch OUT/checkpoint/ holds the weights, optimizer state, early-stopping
state and history; `resume(OUT)` continues from the last completed epoch of the same phase.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import threading
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from .augment import Augmentation, keras_layers
from .cache import ImageCache, cached_images
from .errors import EdgeclsError, ModelError, OptionError
from .evaluate import Metrics, compute_metrics, overfit_warning, plot_confusion
from .manifest import Manifest, atomic_output, atomic_write_text, load_manifest, manifest_path, sha256_file, verify_checksums
from .models import Recipe, build_feature_extractor, get_recipe, resolve_weights
from .outputs import output_lock, refuse_overlaps
from .preprocess import Preprocessing
from .runtime import finite_scores

# --precision values -> Keras dtype policies. `auto` is resolved per phase by `phase_policy`.
PRECISIONS = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
CHECKPOINT_DIR = "checkpoint"
_OUTPUTS = ("model.keras.json", "model.keras", "metrics.json", "history.json", "labels.txt",
            "training_curves.png", "confusion_matrix.png")


# Below this many training images the default skips fine-tuning: on flowers-small (160 training
# images) gradient-trained heads scored below the frozen linear probe by 5-fold CV over three fold
# seeds (0.845-0.848 vs 0.857; the feature head with crop views 0.868:
# bench/results/feature_head_cv_224px.md), and issue 10 reports the same on a 244-photo 2-class
# set (held-out 0.915 vs 0.967).
FINE_TUNE_MIN_IMAGES = 2000
DEFAULT_FINE_TUNE_EPOCHS = 5
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig:
    backbone: str = "mobilenet_v2"
    weights: str | None = None          # imagenet | none | PATH; default: the recipe's
    input_size: tuple[int, int] | None = None
    epochs: int = 10                    # phase 1 (head) epochs
    fine_tune_epochs: int | None = None  # phase 2 epochs; 0 skips; None: by data size (FINE_TUNE_MIN_IMAGES)
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
    precision: str = "auto"             # auto | fp32 | bf16 | fp16 (the saved model is float32 either way)
    deterministic: bool | None = None   # None: on for CPU training, off on an accelerator
    data_parallel: bool = False         # keras.distribution.DataParallel over all local devices (JAX)
    workers: int = 0                    # processes decoding the cache; 0: all cores
    cache_dir: str | None = None        # default: edgecls.cache.cache_root()
    fold: list[int] | None = None       # [k, i]: validate on fold i of a stratified k-fold split (edgecls cv)
    oversample: bool = False            # draw minority-class training images again, up to the largest class
    feature_head: bool = True           # phase 1: logistic regression on backbone features computed once
    feature_crops: float = 0.8          # feature head: also learn from 4 corner crops of this side fraction; 0: none
    head_c: float | None = None         # feature head's inverse L2 strength; None: chosen by inner CV
    # Gradient-trained phases (a --gradient-head, fine-tuning):
    label_smoothing: float = 0.0        # cross-entropy against (1 - e) * one-hot + e / classes
    weight_decay: float = 0.0           # > 0: AdamW with this decoupled weight decay instead of Adam
    lr_schedule: str = "constant"       # constant | cosine (one warm-up epoch, then cosine decay to 0)

    def validate(self) -> Recipe:
        recipe = get_recipe(self.backbone)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.fine_tune_epochs is not None and self.fine_tune_epochs < 0:
            raise OptionError(f"fine_tune_epochs must be >= 0, got {self.fine_tune_epochs}")
        if not 0 <= self.dropout < 1:
            raise OptionError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.precision not in ("auto", *PRECISIONS):
            raise OptionError(f"precision must be one of auto, {', '.join(PRECISIONS)}; got {self.precision!r}")
        if self.workers < 0:
            raise OptionError(f"workers must be >= 0 (0: all cores), got {self.workers}")
        if self.patience < 0:
            raise OptionError(f"patience must be >= 0, got {self.patience}")
        if self.feature_crops and not 0.5 <= self.feature_crops < 1:
            raise OptionError(f"feature_crops must be 0 (no crops) or in [0.5, 1), got {self.feature_crops}")
        if self.head_c is not None and not self.head_c > 0:
            raise OptionError(f"head_c must be positive, got {self.head_c}")
        if not 0 <= self.label_smoothing < 1:
            raise OptionError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.weight_decay < 1:
            raise OptionError(f"weight_decay must be in [0, 1), got {self.weight_decay}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise OptionError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {self.lr_schedule!r}")
        resolve_weights(self.weights or recipe.weights)
        return recipe

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """The config recorded in a checkpoint or manifest (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if kwargs.get("input_size") is not None:
            kwargs["input_size"] = tuple(kwargs["input_size"])
        return cls(**kwargs)


@dataclass
class TrainResult:
    model_path: Path
    out_dir: Path
    labels: list[str]
    metrics: dict[str, Any]
    history: dict[str, list[float]]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TrainingData:
    """A dataset ready to feed: its files, the split, and the decoded pixels (cache)."""

    folder: data_mod.ImageFolder
    split: dict[str, np.ndarray]        # indices into folder.files, as split
    cache: ImageCache
    train: np.ndarray                   # the readable ones
    val: np.ndarray
    skipped: list[tuple[Path, str]]


def _keras():
    try:
        import keras
    except ImportError:
        from .errors import missing_extra

        raise missing_extra("keras (and tensorflow-cpu)", "train") from None
    return keras


def build_model(recipe: Recipe, num_classes: int, input_size: tuple[int, int], weights: str | None,
                dropout: float = 0.2, head_dtype: str | None = None):
    """Backbone + new head. A pretrained backbone starts frozen and runs in inference mode (its
    batch norm statistics stay fixed); one without pretrained weights trains whole, batch norm
    included: a frozen random backbone would leave only the head to learn. `head_dtype`
    ("float32") keeps the softmax in float32 under a mixed-precision policy."""
    keras = _keras()
    backbone = build_feature_extractor(recipe, input_size, weights)
    backbone.trainable = trains_whole(recipe, weights)
    inputs = keras.Input((*input_size, 3), name="image")
    x = backbone(inputs) if backbone.trainable else backbone(inputs, training=False)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype=head_dtype)(x)
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


# --- device, precision, determinism ------------------------------------------------------
def accelerator() -> str:
    """'gpu' (or 'tpu') when the Keras backend computes on an accelerator, else 'cpu'."""
    backend = _keras().backend.backend()
    if backend == "jax":
        import jax

        return jax.default_backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
    if backend == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def phase_policy(precision: str, phase: int, device: str, whole: bool = False) -> str:
    """The Keras dtype policy for a phase. `auto` is float32 on a CPU (no fast bf16 path there);
    on an accelerator float32 while only the head trains over a frozen backbone and
    mixed_bfloat16 when backbone layers train, as measured on an H100 with JAX (issue 9: frozen
    19,911 img/s fp32 vs 10,119 bf16; fine-tuning 5,440 bf16 vs 4,721 fp32)."""
    if precision != "auto":
        return PRECISIONS[precision]
    if device == "cpu":
        return "float32"
    return "float32" if phase == 1 and not whole else "mixed_bfloat16"


def set_determinism(on: bool) -> None:
    """Deterministic kernels (same seed, same model) or the backend's fastest ones."""
    keras = _keras()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        (tf.config.experimental.enable_op_determinism if on
         else tf.config.experimental.disable_op_determinism)()
    elif keras.backend.backend() == "jax" and on:
        # Read when JAX first initialises its GPU backend; the CLI sets it before that.
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_gpu_deterministic_ops" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_gpu_deterministic_ops=true".strip()


def _set_distribution(config: TrainConfig) -> int:
    """Data parallelism over all local devices (Keras distribution API, JAX); returns the count."""
    if not config.data_parallel:
        return 1
    keras = _keras()
    if keras.backend.backend() != "jax":
        raise OptionError("--data-parallel needs the JAX backend (KERAS_BACKEND=jax): it uses "
                          "keras.distribution.DataParallel")
    if os.environ.get("KERAS_DISTRIBUTION_NUM_PROCESSES"):
        keras.distribution.initialize()  # several hosts: jax.distributed from the KERAS_DISTRIBUTION_* variables
    devices = keras.distribution.list_devices()
    if config.batch_size % len(devices):
        raise OptionError(f"batch_size {config.batch_size} must be a multiple of the {len(devices)} devices "
                          "for --data-parallel")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return len(devices)


# --- loading -------------------------------------------------------------------------------
def load_data(dataset: str | Path, config: TrainConfig, preprocessing: Preprocessing, console) -> TrainingData:
    """Scan and split the dataset and open (or build) its decoded-image cache."""
    folder = data_mod.scan(dataset)
    if config.fold:
        from .cv import fold_indices

        split = fold_indices(folder.targets, *config.fold, seed=config.seed)
    else:
        split = data_mod.split_indices(folder.targets, config.val_fraction, config.test_fraction, config.seed)
    if len(split["val"]) == 0:
        raise OptionError("the validation split is empty; raise --val-fraction or add images")
    cache = cached_images(folder, preprocessing, console, config.cache_dir, config.workers or None)
    what = f"decoded {len(cache)} images in {cache.seconds:.1f} s into" if cache.built else "reusing"
    console.print(f"image cache: {what} {cache.path}")
    used = np.zeros(len(folder.files), dtype=bool)
    used[split["train"]] = used[split["val"]] = True
    skipped = [(folder.files[i], reason) for i, reason in
               ((folder.files.index(p), r) for p, r in cache.skipped) if used[i]]
    if skipped:
        console.print(data_mod.skipped_summary(skipped), markup=False)
    train_idx, val_idx = split["train"][cache.ok[split["train"]]], split["val"][cache.ok[split["val"]]]
    for index, name in enumerate(folder.classes):
        if not np.any(folder.targets[train_idx] == index):
            raise EdgeclsError(f"{folder.root / name}: no readable training images for class '{name}'")
    from .imbalance import report_class_counts

    report_class_counts(folder.classes, folder.targets[train_idx], console)
    if len(val_idx) == 0:
        raise EdgeclsError(f"{folder.root}: no readable images in the validation split")
    return TrainingData(folder, split, cache, train_idx, val_idx, skipped)


def _reader(images):
    """rows -> uint8 pictures, from an ImageCache (pread, nothing stays mapped) or an array."""
    return images.read if isinstance(images, ImageCache) else (lambda rows: np.asarray(images[rows]))


def _feeder(images: np.ndarray | ImageCache, targets: np.ndarray, indices: np.ndarray, batch_size: int, *, shuffle: bool,
            seed: int, augmentation: Augmentation | None = None, multiple: int = 1, workers: int = 0):
    """uint8 batches (and targets) from the cache, prefetched by worker threads.

    The order of epoch e (`feed.epoch`, set by the training callback when an epoch begins) is a
    permutation seeded by (seed, e), and the geometric augmentation of batch i by (seed, e, i), so a resumed run sees the same batches as an uninterrupted one
    whatever thread computed them. Within a batch rows are read in file order (sequential reads
    from the memory map). `multiple`: batch sizes are cut to multiples of the device count.
    """
    keras = _keras()
    read = _reader(images)
    workers = workers or max(2, min(8, os.cpu_count() or 2))  # >1 makes Keras prefetch in threads
    count = len(indices)
    n_batches = count // batch_size + (1 if count % batch_size >= multiple else 0)

    class Feed(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers)
            self.epoch = 0
            self._order: tuple[int, np.ndarray] | None = None
            self._lock = threading.Lock()

        def __len__(self):
            return n_batches

        def order(self) -> np.ndarray:
            with self._lock:
                if self._order is None or self._order[0] != self.epoch:
                    perm = np.random.default_rng([seed, self.epoch]).permutation(count) if shuffle else np.arange(count)
                    self._order = (self.epoch, indices[perm])
                return self._order[1]

        def __getitem__(self, i):
            rows = self.order()[i * batch_size : (i + 1) * batch_size]
            rows = np.sort(rows[: len(rows) - len(rows) % multiple])
            x = read(rows)
            if augmentation is not None and augmentation.geometric and not getattr(self, "augmentation_off", False):
                x = augmentation.warp_batch(x, np.random.default_rng([seed, self.epoch, i]))
            return x, targets[rows]

    return Feed()


def _batches(images: np.ndarray, targets: np.ndarray, preprocessing: Preprocessing, batch_size: int,
             augmentation: Augmentation | None, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """What the inference model receives in training: the feeder's uint8 batches through the
    training wrapper's normalisation layer (without the random in-model augmentation)."""
    feed = _feeder(images, targets, np.arange(len(images)), batch_size, shuffle=False, seed=seed,
                   augmentation=augmentation)
    normalize = _normalize_layer(preprocessing)
    return [(np.asarray(normalize(x)), y) for x, y in (feed[i] for i in range(len(feed)))]


# --- models --------------------------------------------------------------------------------
def _normalize_layer(preprocessing: Preprocessing):
    return keras_layers()["Normalize"](preprocessing.scale, preprocessing.mean, preprocessing.std,
                                       preprocessing.channel_order == "BGR", name="normalize")


def training_model(inference, preprocessing: Preprocessing, augmentation: Augmentation | None, seed: int):
    """uint8 pixels -> [flip, brightness, contrast] -> normalisation -> the inference model.

    Training-only: the wrapper is never saved, so the inference model stays free of random ops.
    """
    keras = _keras()
    layers = keras_layers()
    inputs = keras.Input((*preprocessing.size, 3), dtype="uint8", name="pixels")
    x = layers["ToFloat"](name="to_float")(inputs)
    if augmentation is not None and (augmentation.flip or augmentation.contrast or augmentation.brightness):
        x = layers["InModelAugment"](augmentation.flip, augmentation.contrast, augmentation.brightness,
                                     seed=seed, name="augment")(x)
    x = _normalize_layer(preprocessing)(x)
    return keras.Model(inputs, inference(x), name="training")


@dataclass
class _Net:
    """The inference model and its training wrapper, built under one dtype policy."""

    inference: Any
    backbone: Any
    wrapper: Any
    policy: str
    extractor: Any = None   # inputs -> the head's input features (built on first use)


def _build_net(recipe: Recipe, labels: list[str], input_size: tuple[int, int], weights: str | None,
               config: TrainConfig, preprocessing: Preprocessing, policy: str, fine_tuning: bool) -> _Net:
    keras = _keras()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        inference, backbone = build_model(recipe, len(labels), input_size, weights, config.dropout,
                                          head_dtype=None if policy == "float32" else "float32")
        if fine_tuning:
            _unfreeze_top(backbone, recipe.fine_tune_from)
        augmentation = Augmentation(flip=config.flip) if config.augment else None
        wrapper = training_model(inference, preprocessing, augmentation, config.seed)
    finally:
        keras.config.set_dtype_policy(previous)
    return _Net(inference, backbone, wrapper, policy)


# --- checkpoints ---------------------------------------------------------------------------
class Checkpoint:
    """OUT/checkpoint/: the run's config (written first) and, after every epoch, one state file
    (weights, optimizer, early stopping, history), replaced atomically."""

    def __init__(self, out_dir: Path):
        self.dir = out_dir / CHECKPOINT_DIR
        self.config_path, self.state_path = self.dir / "config.json", self.dir / "state.npz"

    def start(self, dataset: Path, config: TrainConfig) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        record = {"dataset": str(dataset), "config": asdict(config)}
        atomic_write_text(self.config_path, json.dumps(record, indent=2))

    def run(self) -> tuple[Path, TrainConfig]:
        try:
            record = json.loads(self.config_path.read_text())
            return Path(record["dataset"]), TrainConfig.from_dict(record["config"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgeclsError(f"{self.config_path}: no resumable run here ({exc}); start one with edgecls train") from None

    def save(self, state: dict, model_vars, optimizer_vars, best: list | None) -> None:
        arrays = {f"m{i}": np.asarray(v) for i, v in enumerate(model_vars)}
        arrays.update({f"o{i}": np.asarray(v) for i, v in enumerate(optimizer_vars)})
        arrays.update({f"b{i}": np.asarray(v) for i, v in enumerate(best or [])})
        with atomic_output(self.state_path) as tmp:
            np.savez(tmp, state=np.asarray(json.dumps(state)), **arrays)

    def load(self) -> dict | None:
        """The last completed epoch's state, or None before the first epoch completed."""
        if not self.state_path.exists():
            return None
        try:
            with np.load(self.state_path) as z:
                state = json.loads(str(z["state"]))
                for prefix, key in (("m", "model"), ("o", "optimizer"), ("b", "best_arrays")):
                    state[key] = [z[f"{prefix}{i}"] for i in range(sum(1 for k in z.files if k[0] == prefix
                                                                         and k[1:].isdigit()))]
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeclsError(f"{self.state_path}: unreadable checkpoint ({exc})") from None
        return state


def _assign(variables, values) -> None:
    if len(variables) != len(values):
        raise EdgeclsError(f"checkpoint holds {len(values)} tensors where the model has {len(variables)}; "
                           "was it written by another version of edgecls?")
    for var, value in zip(variables, values):
        var.assign(value)


def _epoch_callback(net: _Net, phase: int, history: dict, patience: int, checkpoint: Checkpoint,
                    state: dict, progress, name: str, epochs: int, feed):
    """One callback that tells the feeder which epoch begins (its data order and augmentation
    follow the epoch number, also when resumed) and after each epoch does, in this order: early
    stopping on val_loss (with the best weights kept), the checkpoint, and the progress bar."""
    keras = _keras()

    class EpochEnd(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.task = progress.add_task(name, total=epochs, completed=state["epoch"], metrics="")

        def on_epoch_begin(self, epoch, logs=None):
            # Keras starts the prefetching threads after this, when the epoch's first batch is asked for.
            feed.epoch = epoch

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            for k, v in logs.items():
                history.setdefault(k, []).append(float(v))
            val_loss = float(logs.get("val_loss", math.inf))
            if val_loss < state["best"]:
                state.update(best=val_loss, wait=0)
                state["best_weights"] = net.wrapper.get_weights()
            else:
                state["wait"] += 1
                if state["wait"] >= patience:
                    net.wrapper.stop_training = True
            state["epoch"] = epoch + 1
            state["done"] = bool(net.wrapper.stop_training) or epoch + 1 >= epochs
            saved = {k: v for k, v in state.items() if k != "best_weights"}
            checkpoint.save({**saved, "phase": phase, "phase_history": history}, net.wrapper.variables,
                            net.wrapper.optimizer.variables, state.get("best_weights"))
            shown = " ".join(f"{k}={v:.3f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
            progress.update(self.task, completed=epoch + 1, metrics=shown)

        def on_train_end(self, logs=None):
            if state.get("best_weights") is not None:
                net.wrapper.set_weights(state["best_weights"])  # restore the best epoch

    return EpochEnd()


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
        self.manifest, self.path = manifest, path
        self.labels = manifest.labels
        self.preprocessing = manifest.preprocessing

    def scores_resized(self, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
        out = [np.asarray(self.model.predict_on_batch(self.preprocessing.normalize(images[i : i + batch_size])))
               for i in range(0, len(images), batch_size)]
        return finite_scores(np.concatenate(out).astype(np.float32), self.path)




# --- fitting -------------------------------------------------------------------------------
def fit_phase(net: _Net, phase: int, epochs: int, learning_rate: float, feeds: tuple, config: TrainConfig,
              checkpoint: Checkpoint, resumed: dict | None, class_weight: dict | None, console) -> dict[str, list[float]]:
    """Train one phase (compiling the wrapper with a fresh optimizer, `_optimizer`), resuming from
    `resumed` (a checkpoint state of this phase) when given; returns the phase's history."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    train_feed, val_feed = feeds
    net.wrapper.compile(optimizer=_optimizer(config, learning_rate, epochs * len(train_feed), len(train_feed)),
                        loss=_loss(config.label_smoothing), metrics=["accuracy"], jit_compile="auto")
    state: dict[str, Any] = {"epoch": 0, "best": math.inf, "wait": 0, "done": False}
    history: dict[str, list[float]] = {}
    if resumed is not None:
        _assign(net.wrapper.variables, resumed["model"])
        if not resumed["done"]:
            net.wrapper.optimizer.build(net.wrapper.trainable_variables)
            _assign(net.wrapper.optimizer.variables, resumed["optimizer"])
        state.update({k: resumed[k] for k in ("epoch", "best", "wait", "done")})
        state["best_weights"] = resumed["best_arrays"] or None
        history = {k: list(v) for k, v in resumed["phase_history"].items()}
        if state["done"]:
            if state["best_weights"] is not None:
                net.wrapper.set_weights(state["best_weights"])
            return history
    name = "phase 1 (head)" if phase == 1 else "phase 2 (fine-tune)"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[metrics]}"))
    with Progress(*columns, console=console) as progress:
        callback = _epoch_callback(net, phase, history, config.patience, checkpoint, state, progress, name, epochs,
                                   train_feed)
        net.wrapper.fit(train_feed, validation_data=val_feed, epochs=epochs, initial_epoch=state["epoch"], verbose=0,
                        # The feeder orders batches by (seed, epoch) itself; Keras' own shuffle
                        # would draw from Python's global RNG, which a resumed run cannot replay.
                        shuffle=False, class_weight=class_weight, callbacks=[callback])
    return history


def _optimizer(config: TrainConfig, learning_rate: float, total_steps: int, warmup_steps: int):
    """Adam, or AdamW with `weight_decay`; constant rate, or one warm-up epoch then cosine decay."""
    keras = _keras()
    rate = learning_rate
    if config.lr_schedule == "cosine" and total_steps > warmup_steps:
        rate = keras.optimizers.schedules.CosineDecay(learning_rate / 10, total_steps - warmup_steps,
                                                      warmup_target=learning_rate, warmup_steps=warmup_steps)
    if config.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def _loss(label_smoothing: float):
    """Sparse cross-entropy, with label smoothing when asked (Keras' sparse loss has none)."""
    keras = _keras()
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy()
    ops = keras.ops

    def smoothed_cross_entropy(y_true, y_pred):
        log_p = ops.log(ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0))
        index = ops.reshape(ops.cast(y_true, "int32"), (-1, 1))
        nll = -ops.take_along_axis(log_p, index, axis=-1)[:, 0]
        return (1 - label_smoothing) * nll - label_smoothing * ops.mean(log_p, axis=-1)

    return smoothed_cross_entropy


def planned_fine_tune_epochs(config: TrainConfig, train_count: int, whole: bool = False) -> int:
    """The configured fine-tuning epochs, or by data size when not configured (none for a
    network trained whole from the start)."""
    if config.fine_tune_epochs is not None:
        return config.fine_tune_epochs
    if whole:
        return 0
    return DEFAULT_FINE_TUNE_EPOCHS if train_count >= FINE_TUNE_MIN_IMAGES else 0


def _fine_tune_epochs(config: TrainConfig, train_count: int, whole: bool, console) -> int:
    """`planned_fine_tune_epochs`, saying so when the data size ruled fine-tuning out."""
    epochs = planned_fine_tune_epochs(config, train_count, whole)
    if config.fine_tune_epochs is None and not whole and not epochs:
        console.print(f"no fine-tuning phase: {train_count} training images (fewer than {FINE_TUNE_MIN_IMAGES}), "
                      "where fine-tuning overfits; --fine-tune-epochs N asks for it")
    return epochs


def fit_phases(build, phases, policies: dict, feeds: tuple, config: TrainConfig, checkpoint: Checkpoint,
               resumed: dict | None, class_weight: dict | None, console, fine_tune_from: str):
    """Run the phases in order (from the resumed one), each on a net built under its dtype policy
    and starting from the previous phase's weights; returns (net, history, phase boundary)."""
    start_phase = resumed["phase"] if resumed else 1
    history: dict[str, list[float]] = {k: list(v) for k, v in (resumed or {}).get("earlier_history", {}).items()}
    phase_boundary = (resumed or {}).get("phase_boundary", 0)
    net = None
    for phase, epochs, lr in phases:
        if phase < start_phase:
            continue
        previous, net = net, build(policies[phase], phase == 2)
        if previous is not None:
            net.wrapper.set_weights(previous.wrapper.get_weights())
        if phase == 2:
            console.print(f"phase 2: fine-tuning the backbone from '{fine_tune_from}'")
        this = resumed if resumed and resumed["phase"] == phase else None
        # Written into every checkpoint of the phase, so a resume knows what came before.
        extra = _Extra(checkpoint, {"earlier_history": history, "phase_boundary": phase_boundary})
        if phase == 1 and config.feature_head and this is None and not net.backbone.trainable:
            # Crop views only pay when this head is the final one; before fine-tuning it is a start.
            final = not any(p == 2 and e > 0 for p, e, _ in phases)
            phase_history = fit_feature_head(net, feeds, config, class_weight, console, crops=final)
            extra.save({"epoch": len(phase_history["loss"]), "best": 0.0, "wait": 0, "done": True, "phase": 1,
                        "phase_history": phase_history}, net.wrapper.variables, [], None)
        else:
            phase_history = fit_phase(net, phase, epochs, lr, feeds, config, extra, this, class_weight, console)
        if phase == 1:
            phase_boundary = len(phase_history.get("loss", []))
        for k, v in phase_history.items():
            history.setdefault(k, []).extend(v)
    return net, history, phase_boundary


def frozen_features(net: _Net, feed, views=(None,)) -> tuple[list[np.ndarray], np.ndarray]:
    """Backbone features (the head's input) of every picture a feeder yields, computed once with
    the training wrapper's normalisation and no augmentation, for each of `views` (a function of
    the uint8 batch, or None for the picture as is: see `augment.feature_views`). Each batch is
    read once for all views. Returns one feature array per view, and the targets."""
    keras = _keras()
    if net.extractor is None:  # one model for every call: a new one per call retraces its predict function
        net.extractor = keras.Model(net.inference.inputs, net.inference.get_layer("probabilities").input)
    normalize = net.wrapper.get_layer("normalize")
    xs: list[list[np.ndarray]] = [[] for _ in views]
    ys = []
    for i in range(len(feed)):
        x, y = feed[i]
        for out, view in zip(xs, views):
            pixels = normalize(np.ascontiguousarray(view(x) if view is not None else x))
            out.append(np.asarray(net.extractor.predict_on_batch(keras.ops.convert_to_numpy(pixels)), np.float32))
        ys.append(y)
    return [np.concatenate(parts) for parts in xs], np.concatenate(ys)


def fit_feature_head(net: _Net, feeds: tuple, config: TrainConfig, class_weight: dict | None,
                     console, crops: bool = True) -> dict[str, list[float]]:
    """Phase 1 on features computed once: the frozen backbone runs over the training set (as is
    and, with augmentation on, in the fixed views of `augment.feature_views`: mirrored, and four
    corner crops when `crops`) and the validation set once instead of once per epoch; the head
    is a multinomial logistic regression on those features (`logistic_head`), which is what a
    softmax dense layer computes, so its weights go straight into the model. Host-side
    rotation/zoom does not apply here (features are computed once)."""
    from sklearn.metrics import accuracy_score, log_loss

    from .augment import feature_views
    from .runtime import softmax

    train_feed, val_feed = feeds
    train_feed.epoch = 0
    views = feature_views(config.flip, config.feature_crops if crops else 0.0) if config.augment else {"as is": None}
    with _status(console, f"phase 1 (head): backbone features of {len(views)} view(s), computed once"):
        per_view, targets = frozen_features(net, _unwarped(train_feed), tuple(views.values()))
        (vx,), vy = frozen_features(net, val_feed)
    tx, ty = np.concatenate(per_view), np.tile(targets, len(per_view))
    pictures = np.tile(np.arange(len(targets)), len(per_view))  # views of one picture share an inner fold
    head = net.inference.get_layer("probabilities")
    kernel, bias, c = logistic_head(tx, ty, head.units, config.seed, class_weight, groups=pictures, c=config.head_c)
    head.set_weights([kernel, bias])
    labels = list(range(head.units))

    def probs(x):
        return softmax(x @ kernel + bias)

    history = {"loss": [float(log_loss(ty, probs(tx), labels=labels))],
               "accuracy": [float(accuracy_score(ty, probs(tx).argmax(1)))],
               "val_loss": [float(log_loss(vy, probs(vx), labels=labels))],
               "val_accuracy": [float(accuracy_score(vy, probs(vx).argmax(1)))]}
    how = "given" if config.head_c is not None else "chosen by 3-fold CV on the training split"
    console.print(f"phase 1 (head): logistic regression on {len(tx)} feature vectors ({', '.join(views)}), "
                  f"C={c:g} {how}; val_accuracy {history['val_accuracy'][0]:.3f}")
    return history


def logistic_head(x: np.ndarray, y: np.ndarray, classes: int, seed: int = 0, class_weight: dict | None = None,
                  cs: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0, 3.0), groups: np.ndarray | None = None,
                  c: float | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Multinomial L2 logistic regression (scikit-learn) on features, its strength C given or
    chosen by stratified 3-fold CV on these training features only (`groups`: rows of one
    picture, its views, stay in one inner fold, so a crop never scores its own original);
    returns a softmax dense layer's (kernel, bias) and C."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.arange(len(y)) if groups is None else groups
    counts = np.bincount(y[np.unique(groups, return_index=True)[1]], minlength=classes)
    smallest = int(counts[counts > 0].min())
    weight = "balanced" if class_weight else None
    if c is None and smallest >= 3:
        folds = list(StratifiedGroupKFold(3, shuffle=True, random_state=seed).split(x, y, groups))
        model = LogisticRegressionCV(Cs=list(cs), cv=folds, max_iter=3000, class_weight=weight, random_state=seed,
                                     scoring="neg_log_loss")
    else:  # C given, or too few pictures per class to cross-validate it: the usual default
        model = LogisticRegression(C=1.0 if c is None else c, max_iter=3000, class_weight=weight, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # scikit-learn's notes on changing defaults
        model.fit(x, y)
    coef, intercept = model.coef_, model.intercept_
    kernel = np.zeros((x.shape[1], classes), np.float32)
    bias = np.zeros(classes, np.float32)
    present = model.classes_
    if coef.shape[0] == 1:  # two classes: sklearn keeps one logit, a softmax needs two
        kernel[:, present[1]], bias[present[1]] = coef[0], intercept[0]
    else:
        kernel[:, present] = coef.T
        bias[present] = intercept
    # Classes absent from training get a logit far below the others, never a prediction.
    missing = np.setdiff1d(np.arange(classes), present)
    bias[missing] = -1e4
    c = float(np.ravel(model.C_)[0]) if hasattr(model, "C_") else model.C
    return kernel, bias, c


def train_head(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, classes: int,
               config: TrainConfig, class_weight: dict | None = None, label_smoothing: float = 0.0,
               weight_decay: float = 0.0) -> tuple[list, dict[str, list[float]]]:
    """Dropout + softmax dense layer trained by gradient descent on features (AdamW, label
    smoothing), early-stopped on validation loss; returns its [kernel, bias] and history. The
    trainer uses `logistic_head`; this is the comparison in bench/feature_head_cv.py."""
    keras = _keras()
    inputs = keras.Input((train_x.shape[1],))
    x = keras.layers.Dropout(config.dropout, seed=config.seed)(inputs) if config.dropout else inputs
    head = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
    head.compile(optimizer=keras.optimizers.AdamW(config.learning_rate, weight_decay=weight_decay),
                 loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
                 metrics=["accuracy"])
    onehot = np.eye(classes, dtype=np.float32)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=max(10, config.patience),
                                         restore_best_weights=True)
    epochs = max(config.epochs, 200)  # an epoch over features costs milliseconds; early stopping ends it
    hist = head.fit(train_x, onehot[train_y], validation_data=(val_x, onehot[val_y]), epochs=epochs,
                    batch_size=config.batch_size, verbose=0, shuffle=True, class_weight=class_weight, callbacks=[stop])
    return head.layers[-1].get_weights(), {k: [float(v) for v in vals] for k, vals in hist.history.items()}


def _unwarped(feed):
    """The same feeder without its host-side warps (features are computed once, unaugmented)."""
    import copy

    clone = copy.copy(feed)
    clone.augmentation_off = True
    return clone


def _status(console, text: str):
    return console.status(text) if hasattr(console, "status") else __import__("contextlib").nullcontext()


def _class_weight(targets: np.ndarray, num_classes: int) -> dict[int, float]:
    counts = np.bincount(targets, minlength=num_classes)
    return {i: float(len(targets) / (num_classes * c)) for i, c in enumerate(counts) if c}


# --- saving and evaluating -------------------------------------------------------------------
def save_model(model, out_dir: Path) -> Path:
    """Write model.keras atomically (the manifest, written last, is what marks a run finished)."""
    model_path = out_dir / "model.keras"
    with atomic_output(model_path) as tmp:
        model.save(tmp)
    return model_path


def evaluate_split(model, images: np.ndarray | ImageCache, indices: np.ndarray, targets: np.ndarray,
                   preprocessing: Preprocessing, labels: list[str], batch_size: int = 64) -> Metrics:
    """Metrics of the inference model on cached images, normalised as the runtime does."""
    read = _reader(images)
    probs = [np.asarray(model.predict_on_batch(preprocessing.normalize(read(np.sort(indices[i : i + batch_size])))))
             for i in range(0, len(indices), batch_size)]
    order = np.concatenate([np.sort(indices[i : i + batch_size]) for i in range(0, len(indices), batch_size)])
    scores = finite_scores(np.concatenate(probs), "the trained model (diverged?)")
    return compute_metrics(targets[order], scores.argmax(1), labels)


def _clear_outputs(out_dir: Path) -> None:
    """A new run first removes an earlier run's results, manifest first: whatever it leaves
    behind if killed can never pass for a finished model."""
    for name in _OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)


def train(dataset: str | Path, out_dir: str | Path, config: TrainConfig, console=None) -> TrainResult:
    """Train a classifier on an image-folder dataset and save model, labels, history and plots."""
    config.validate()
    out_dir = Path(out_dir)
    refuse_overlaps({"dataset": dataset}, folders={"--out": out_dir})
    with output_lock(out_dir, "edgecls train"):
        _clear_outputs(out_dir)
        checkpoint = Checkpoint(out_dir)
        checkpoint.start(Path(dataset).resolve(), config)
        return _run(Path(dataset), out_dir, config, checkpoint, None, console)


def resume(out_dir: str | Path, console=None) -> TrainResult:
    """Continue a killed `train` from its last completed epoch (same phase, optimizer state)."""
    out_dir = Path(out_dir)
    checkpoint = Checkpoint(out_dir)
    if not checkpoint.config_path.exists():
        done = " (that run finished)" if manifest_path(out_dir / "model.keras").exists() else ""
        raise EdgeclsError(f"{out_dir}: no checkpoint to resume{done}; expected {checkpoint.config_path}")
    dataset, config = checkpoint.run()
    config.validate()
    with output_lock(out_dir, "edgecls train --resume"):
        _clear_outputs(out_dir)
        return _run(dataset, out_dir, config, checkpoint, checkpoint.load(), console)


def _run(dataset: Path, out_dir: Path, config: TrainConfig, checkpoint: Checkpoint, resumed: dict | None,
         console) -> TrainResult:
    from rich.console import Console

    console = console or Console(stderr=True)
    recipe = config.validate()
    weights = resolve_weights(config.weights or recipe.weights)
    input_size = tuple(config.input_size or recipe.input_size)
    preprocessing = recipe.preprocessing(input_size)
    loaded = load_data(dataset, config, preprocessing, console)
    labels = list(loaded.folder.classes)
    keras = _keras()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        set_determinism(True)  # before the backend initialises: XLA reads its flags once
    device = accelerator()
    deterministic = (device == "cpu") if config.deterministic is None else config.deterministic
    set_determinism(deterministic)
    devices = _set_distribution(config)
    whole = trains_whole(recipe, weights)
    fine_tune_epochs = _fine_tune_epochs(config, len(loaded.train), whole, console)
    fine_tune = bool(fine_tune_epochs and recipe.fine_tune_from and not whole)
    if fine_tune_epochs and whole:
        console.print("no fine-tuning phase: without pretrained weights the whole network trained from the start")
    images, targets = loaded.cache, loaded.folder.targets
    augmentation = Augmentation(flip=config.flip) if config.augment else None
    from .imbalance import oversampled

    train_feed = oversampled(loaded.train, targets, config.seed) if config.oversample else loaded.train
    feeds = (_feeder(images, targets, train_feed, config.batch_size, shuffle=True, seed=config.seed,
                     augmentation=augmentation, multiple=devices),
             _feeder(images, targets, loaded.val, config.batch_size, shuffle=False, seed=config.seed, multiple=devices))
    class_weight = _class_weight(targets[loaded.train], len(labels)) if config.class_weights else None
    phases = [(1, config.epochs, config.learning_rate)] + (
        [(2, fine_tune_epochs, config.fine_tune_learning_rate)] if fine_tune else [])
    policies = {phase: phase_policy(config.precision, phase, device, whole) for phase, _, _ in phases}
    build = lambda policy, fine: _build_net(recipe, labels, input_size, weights, config,  # noqa: E731
                                            preprocessing, policy, fine)
    try:
        net, history, phase_boundary = fit_phases(build, phases, policies, feeds, config, checkpoint, resumed,
                                                  class_weight, console, recipe.fine_tune_from)
        if net.policy != "float32" or config.data_parallel:
            # What is saved and exported: the float32 inference model on one device.
            if config.data_parallel:
                keras.distribution.set_distribution(None)
            copy = build("float32", fine_tune)
            copy.inference.set_weights(net.inference.get_weights())
            net = copy
    finally:
        if config.data_parallel:
            keras.distribution.set_distribution(None)
    model = net.inference
    training = {"backend": keras.backend.backend(), "device": device, "devices": devices,
                "precision": {f"phase {p}": v for p, v in policies.items()}, "deterministic": deterministic,
                "resumed": resumed is not None, "cache": str(loaded.cache.path)}
    result = _finish(model, out_dir, dataset, config, recipe, loaded, labels, preprocessing, history,
                     phase_boundary, training)
    shutil.rmtree(checkpoint.dir, ignore_errors=True)
    return result


class _Extra:
    """A Checkpoint that adds fixed fields (history of earlier phases) to every state it saves."""

    def __init__(self, checkpoint: Checkpoint, extra: dict):
        self.checkpoint, self.extra = checkpoint, extra

    def save(self, state, *args) -> None:
        self.checkpoint.save({**state, **self.extra}, *args)


def _finish(model, out_dir: Path, dataset: Path, config: TrainConfig, recipe: Recipe, loaded: TrainingData,
            labels: list[str], preprocessing: Preprocessing, history: dict, phase_boundary: int,
            training: dict) -> TrainResult:
    """Save the model, evaluate it, write history, plots and metrics, and the manifest last."""
    model_path = save_model(model, out_dir)
    atomic_write_text(out_dir / "labels.txt", "\n".join(labels) + "\n")
    atomic_write_text(out_dir / "history.json", json.dumps({"phase_boundary": phase_boundary, **history}, indent=2))
    plot_history(history, phase_boundary, out_dir / "training_curves.png")
    images, targets = loaded.cache, loaded.folder.targets
    train_metrics = evaluate_split(model, images, loaded.train, targets, preprocessing, labels)
    val_metrics = evaluate_split(model, images, loaded.val, targets, preprocessing, labels)
    plot_confusion(val_metrics, out_dir / "confusion_matrix.png", "Validation confusion matrix")
    warnings = [w for w in [overfit_warning(train_metrics.accuracy, val_metrics.accuracy)] if w]
    metrics = {"train": train_metrics.to_dict(), "val": val_metrics.to_dict(), "warnings": warnings}
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    input_size = preprocessing.size
    manifest = Manifest(
        format="keras", quantization="fp32", labels=labels, preprocessing=preprocessing,
        input={"name": "image", "shape": [-1, *input_size, 3], "dtype": "float32", "layout": "NHWC", "quantization": None},
        output={"name": "probabilities", "shape": [-1, len(labels)], "dtype": "float32", "activation": "softmax"},
        source={
            "backbone": recipe.name, "weights": str(config.weights or recipe.weights),
            "dataset": str(Path(dataset).resolve()),
            # The file lists, not just (fractions, seed): photos added later must not move between splits.
            "split": {"val_fraction": config.val_fraction, "test_fraction": config.test_fraction, "seed": config.seed,
                      "files": data_mod.split_record(loaded.folder, loaded.split)},
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()},
            "training": training,
        },
        artifact_sha256=sha256_file(model_path),
        verification={"val_accuracy": val_metrics.accuracy, "train_accuracy": train_metrics.accuracy,
                      "val_count": val_metrics.count},
    )
    manifest.save(model_path)
    return TrainResult(model_path, out_dir, labels, metrics, history, loaded.skipped, warnings)


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
