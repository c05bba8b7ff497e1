"""Phase 1 as a logistic regression on backbone features computed once (the default head), and
the gradient-trained head on the same features that bench/feature_head_cv.py compares it with."""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from ..errors import EdgeclsError
from ..keras_model import keras as _keras
from .config import TrainConfig
from .feed import unwarped
from .network import Net


def frozen_features(net: Net, feed, views=(None,), session=None) -> tuple[list[np.ndarray], np.ndarray]:
    """Backbone features (the head's input) of every picture a feeder yields, computed once with
    the training wrapper's normalisation and no augmentation, for each of `views` (a function of
    the uint8 batch, or None for the picture as is: see `augment.feature_views`). Each batch is
    read once for all views. Returns one feature array per view, and the targets. In a
    multi-process `session` each process computes its share of every batch and all get every
    feature, in the order one process would have computed them."""
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
    if session is None or not session.distributed:
        return [np.concatenate(parts) for parts in xs], np.concatenate(ys)
    return [session.gather_batches(parts) for parts in xs], session.gather_batches(ys)


def fit_feature_head(net: Net, feeds: tuple, config: TrainConfig, class_weight: dict | None,
                     console, crops: bool = True, session=None, features: tuple | None = None) -> dict[str, list[float]]:
    """Phase 1 on features computed once: the frozen backbone runs over the training set (as is
    and, with augmentation on, in the fixed views of `augment.feature_views`: mirrored, and four
    corner crops when `crops`) and the validation set once instead of once per epoch; the head
    is a multinomial logistic regression on those features (`logistic_head`), which is what a
    softmax dense layer computes, so its weights go straight into the model. Host-side
    rotation/zoom does not apply here. In a multi-process `session` the processes share the
    backbone's work and process 0's regression is the head in every process. `features`: (per
    view, targets, validation features, targets) already computed (`decide.features`)."""
    from sklearn.metrics import accuracy_score, log_loss

    from ..augment import feature_views
    from ..runtime import softmax

    train_feed, val_feed = feeds
    train_feed.epoch = 0
    views = feature_views(config.flip, config.feature_crops if crops else 0.0) if config.augment else {"as is": None}
    with status(console, f"phase 1 (head): backbone features of {len(views)} view(s), computed once"):
        per_view, targets, vx, vy = features or (*frozen_features(net, unwarped(train_feed), tuple(views.values()),
                                                                   session), None, None)
        if features is None and not config.refit_all:
            (vx,), vy = frozen_features(net, val_feed, session=session)
    tx, ty = np.concatenate(per_view), np.tile(targets, len(per_view))
    broken = sum(int((~np.isfinite(x).all(axis=1)).sum()) for x in ([tx] if config.refit_all else [tx, vx]))
    if broken:
        raise EdgeclsError(f"phase 1 (head): the backbone's features are not finite numbers (NaN or infinity) for "
                           f"{broken} picture(s): its weights are broken (check --weights) or it overflows; no model "
                           "was written")
    pictures = np.tile(np.arange(len(targets)), len(per_view))  # views of one picture share an inner fold
    head = net.inference.get_layer("probabilities")
    if session is None or not session.distributed:
        kernel, bias, c = logistic_head(tx, ty, head.units, config.seed, class_weight, groups=pictures, c=config.head_c)
    else:
        kernel, bias, c = _shared_head(session, lambda: logistic_head(tx, ty, head.units, config.seed, class_weight,
                                                                    groups=pictures, c=config.head_c),
                                       (tx.shape[1], head.units))
    head.set_weights([kernel, bias])
    if config.refit_all:
        from .refit import cv_estimate

        with status(console, f"--refit-all: {config.cv_folds}-fold CV estimate of the head (C={c:g})"):
            net.cv_estimate = cv_estimate(per_view, targets, head.units, config, class_weight, c)
        vx, vy = per_view[0], targets  # history's val_* are the out-of-fold figures below
    labels = list(range(head.units))

    def probs(x):
        return softmax(x @ kernel + bias)

    val_probs = net.cv_estimate["probabilities"] if config.refit_all else probs(vx)
    history = {"loss": [float(log_loss(ty, probs(tx), labels=labels))],
               "accuracy": [float(accuracy_score(ty, probs(tx).argmax(1)))],
               "val_loss": [float(log_loss(vy, val_probs, labels=labels))],
               "val_accuracy": [float(accuracy_score(vy, val_probs.argmax(1)))]}
    how = "given" if config.head_c is not None else "chosen by 3-fold CV on the training split"
    scored = (f"{config.cv_folds}-fold CV estimate {history['val_accuracy'][0]:.3f} (all photos train the shipped head)"
              if config.refit_all else f"val_accuracy {history['val_accuracy'][0]:.3f}")
    console.print(f"phase 1 (head): logistic regression on {len(tx)} feature vectors ({', '.join(views)}), "
                  f"C={c:g} {how}; {scored}")
    return history


def _shared_head(session, fit, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Process 0's fit in every process: one regression, so every process holds the same head
    bit for bit (the others wait on the coordination service, not in a collective, meanwhile)."""
    if session.is_writer:
        kernel, bias, c = fit()
    else:
        kernel, bias, c = np.zeros(shape, np.float32), np.zeros(shape[1], np.float32), 0.0
    c = float(session.share("feature head C", repr(c) if session.is_writer else None))
    kernel, bias = session.broadcast([kernel, bias])
    return kernel, bias, c


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


def status(console, text: str):
    """A spinner saying `text` while a block runs, where the console has one."""
    return console.status(text) if hasattr(console, "status") else contextlib.nullcontext()
