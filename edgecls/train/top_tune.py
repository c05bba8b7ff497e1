"""Fine-tuning the backbone's top on activations computed once.

Phase 2 unfreezes the backbone from the recipe's `fine_tune_from` layer on; everything below it
stays frozen, so its output for a picture never changes. Where the network reaches the top
through that one tensor (MobileNetV2's `block_13_expand` input: 14x14x96 at 224 px), the frozen
part runs once per picture and view, the activations are kept (float16), and the top trains on
them: no decoding, no frozen forward pass per epoch. The feature head's features come from the
same activations, so the head pays nothing extra for them. Views are the feature head's (as is,
mirrored): each epoch draws one per picture.

`edgecls.train.decide` uses this to fine-tune on the training split and compare with the feature
head on the validation split, at a bounded cost, before deciding which one to keep.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import EdgeclsError
from ..keras_model import keras as _keras

# Activations are kept in memory; above this the trainer fine-tunes on pictures instead.
MEMORY_BUDGET_BYTES = 2 * 1024**3


@dataclass
class CutModels:
    """The frozen part below the fine-tuning cut and the top above it, sharing the backbone's layers."""

    bottom: Any      # normalized pixels -> activations at the cut
    top: Any         # activations -> the head's input features (pooled)
    shape: tuple     # one picture's activations
    cut: str         # the layer whose input is the cut

    def bytes_per_picture(self) -> int:
        return int(np.prod(self.shape)) * 2  # float16


def cut_models(net, fine_tune_from: str) -> CutModels | None:
    """The backbone split at `fine_tune_from`'s input, or None where the top also reads tensors
    from below the cut (a skip connection across it: its activations alone do not determine the top)."""
    keras = _keras()
    backbone = net.backbone
    try:
        cut_tensor = backbone.get_layer(fine_tune_from).input
        bottom = keras.Model(backbone.input, cut_tensor)
        upper = keras.Model(cut_tensor, backbone.output)
    except (ValueError, KeyError, AttributeError):
        return None
    inputs = keras.Input(tuple(cut_tensor.shape[1:]), name="activations")
    x = upper(inputs, training=False)  # batch norm stays in inference mode, as in phase 2
    if len(x.shape) == 4:
        x = net.inference.get_layer("pool")(x)
    return CutModels(bottom, keras.Model(inputs, x, name="top_features"), tuple(cut_tensor.shape[1:]), fine_tune_from)


@dataclass
class Activations:
    """Each training picture's activations at the cut, per view, and the validation pictures' (as is)."""

    train: list[np.ndarray]
    targets: np.ndarray
    val: np.ndarray
    val_targets: np.ndarray
    seconds: float = 0.0
    extras: dict = field(default_factory=dict)


def trial_model(net, cut: CutModels):
    """Activations -> the inference model's head, through the top: the layers are the inference
    model's own, so training this trains the model that is saved."""
    keras = _keras()
    inputs = keras.Input(cut.shape, name="activations")
    x = cut.top(inputs)
    if "dropout" in [layer.name for layer in net.inference.layers]:
        x = net.inference.get_layer("dropout")(x)
    return keras.Model(inputs, net.inference.get_layer("probabilities")(x), name="top_tune")


def tune_top(net, cut: CutModels, acts: Activations, epochs: int, learning_rate: float, config, class_weight,
             console) -> dict[str, list[float]]:
    """Train the top (from the cut on, batch norm frozen) and the head on the kept activations for
    `epochs` epochs, the learning rate decaying to zero on a cosine (the last epoch's weights are
    the result: nothing is chosen on the validation split); returns the per-epoch history."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .gradient import loss
    from .network import unfreeze_top

    keras = _keras()
    unfreeze_top(net.backbone, cut.cut)
    model = trial_model(net, cut)
    n, batch = len(acts.targets), config.batch_size
    steps = epochs * math.ceil(n / batch)
    model.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps)),
                  loss=loss(config.label_smoothing), metrics=["accuracy"])
    rng = np.random.default_rng(config.seed)
    history: dict[str, list[float]] = {}
    started = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[metrics]}"))
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"fine-tuning trial (from '{cut.cut}')", total=epochs, metrics="")
        for _ in range(epochs):
            order, view = rng.permutation(n), rng.integers(0, len(acts.train), n)
            model.reset_metrics()  # train_on_batch keeps running means: one epoch's from here
            for start in range(0, n, batch):
                rows = order[start:start + batch]
                x = np.stack([acts.train[v][r] for v, r in zip(view[start:start + batch], rows)]).astype(np.float32)
                result = model.train_on_batch(x, acts.targets[rows], class_weight=class_weight, return_dict=True)
            val = predict(model, acts.val)
            epoch = {"loss": float(result["loss"]), "accuracy": float(result["accuracy"]),
                     "val_loss": _log_loss(val, acts.val_targets), "val_accuracy": float(np.mean(val.argmax(1) == acts.val_targets))}
            if not all(math.isfinite(v) for v in epoch.values()):
                raise EdgeclsError(f"fine-tuning trial: training diverged in epoch {len(history.get('loss', [])) + 1} "
                                   f"(learning rate {learning_rate:g}); lower --fine-tune-learning-rate")
            for k, v in epoch.items():
                history.setdefault(k, []).append(v)
            progress.update(task, advance=1, metrics=" ".join(f"{k}={v:.3f}" for k, v in epoch.items()))
    net.trial_seconds = time.perf_counter() - started
    return history


def predict(model, activations: np.ndarray, batch: int = 64) -> np.ndarray:
    """The model's outputs for kept (float16) activations."""
    return np.concatenate([on_batch(model, activations[i:i + batch].astype(np.float32), batch)
                           for i in range(0, len(activations), batch)])


def on_batch(model, x: np.ndarray, batch: int) -> np.ndarray:
    """`model.predict_on_batch` on a batch padded to `batch` rows (a shorter last batch would make
    TensorFlow trace the function again for its shape), the padding cut off the result."""
    rows = len(x)
    if rows < batch:
        x = np.concatenate([x, np.zeros((batch - rows, *x.shape[1:]), x.dtype)])
    return np.asarray(model.predict_on_batch(x))[:rows]


def _log_loss(probs: np.ndarray, targets: np.ndarray) -> float:
    picked = probs[np.arange(len(targets)), targets]
    return float(-np.mean(np.log(np.clip(picked, 1e-7, 1.0))))
