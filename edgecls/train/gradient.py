"""A phase trained by gradient descent (a gradient head, fine-tuning): loss, optimizer, the
per-epoch callback (early stopping, checkpoint, progress) and the fit, resumable mid-phase."""
from __future__ import annotations

import math
from typing import Any

from ..keras_model import keras as _keras
from .checkpoint import Checkpoint, assign
from .config import TrainConfig
from .network import Net


def loss(label_smoothing: float):
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


def optimizer(config: TrainConfig, learning_rate: float, total_steps: int, warmup_steps: int):
    """Adam, or AdamW with `weight_decay`; constant rate, or one warm-up epoch then cosine decay."""
    keras = _keras()
    rate = learning_rate
    if config.lr_schedule == "cosine" and total_steps > warmup_steps:
        rate = keras.optimizers.schedules.CosineDecay(learning_rate / 10, total_steps - warmup_steps,
                                                      warmup_target=learning_rate, warmup_steps=warmup_steps)
    if config.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=config.weight_decay)
    return keras.optimizers.Adam(rate)


def epoch_callback(net: Net, phase: int, history: dict, patience: int, checkpoint: Checkpoint,
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


def _restore(net: Net, resumed: dict, state: dict) -> dict[str, list[float]]:
    """Weights, optimizer and early-stopping state of a checkpoint of this phase; its history."""
    assign(net.wrapper.variables, resumed["model"])
    if not resumed["done"]:
        net.wrapper.optimizer.build(net.wrapper.trainable_variables)
        assign(net.wrapper.optimizer.variables, resumed["optimizer"])
    state.update({k: resumed[k] for k in ("epoch", "best", "wait", "done")})
    state["best_weights"] = resumed["best_arrays"] or None
    if state["done"] and state["best_weights"] is not None:
        net.wrapper.set_weights(state["best_weights"])
    return {k: list(v) for k, v in resumed["phase_history"].items()}


def fit_phase(net: Net, phase: int, epochs: int, learning_rate: float, feeds: tuple, config: TrainConfig,
              checkpoint: Checkpoint, resumed: dict | None, class_weight: dict | None, console) -> dict[str, list[float]]:
    """Train one phase (compiling the wrapper with a fresh `optimizer`), resuming from `resumed`
    (a checkpoint state of this phase) when given; returns the phase's history."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    train_feed, val_feed = feeds
    net.wrapper.compile(optimizer=optimizer(config, learning_rate, epochs * len(train_feed), len(train_feed)),
                        loss=loss(config.label_smoothing), metrics=["accuracy"], jit_compile="auto")
    state: dict[str, Any] = {"epoch": 0, "best": math.inf, "wait": 0, "done": False}
    history: dict[str, list[float]] = {}
    if resumed is not None:
        history = _restore(net, resumed, state)
        if state["done"]:
            return history
    name = "phase 1 (head)" if phase == 1 else "phase 2 (fine-tune)"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[metrics]}"))
    with Progress(*columns, console=console) as progress:
        callback = epoch_callback(net, phase, history, config.patience, checkpoint, state, progress, name, epochs,
                                  train_feed)
        net.wrapper.fit(train_feed, validation_data=val_feed, epochs=epochs, initial_epoch=state["epoch"], verbose=0,
                        # The feeder orders batches by (seed, epoch) itself; Keras' own shuffle
                        # would draw from Python's global RNG, which a resumed run cannot replay.
                        shuffle=False, class_weight=class_weight, callbacks=[callback])
    return history
