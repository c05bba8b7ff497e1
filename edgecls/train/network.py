"""The networks a run trains: the inference model (backbone + new head, the one saved and
exported) and a training-only wrapper around it (uint8 pixels, in-model augmentation,
normalisation), built together under one dtype policy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..augment import Augmentation, keras_layers
from ..errors import EdgeclsError
from ..keras_model import keras as _keras
from ..models import Recipe, build_feature_extractor
from ..preprocess import Preprocessing
from .config import TrainConfig


def trains_whole(recipe: Recipe, weights: str | None) -> bool:
    """Whether the backbone trains from the start (no pretrained weights to keep)."""
    return weights is None or recipe.application == ""


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


def unfreeze_top(backbone, fine_tune_from: str) -> int:
    """Make the backbone's layers from `fine_tune_from` on trainable (batch norm stays frozen);
    returns how many layers that is."""
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


def normalize_layer(preprocessing: Preprocessing):
    """The manifest's normalisation as a Keras layer (named "normalize")."""
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
    x = normalize_layer(preprocessing)(x)
    return keras.Model(inputs, inference(x), name="training")


@dataclass
class Net:
    """The inference model and its training wrapper, built under one dtype policy."""

    inference: Any
    backbone: Any
    wrapper: Any
    policy: str
    extractor: Any = None   # inputs -> the head's input features (built on first use)
    cv_estimate: dict | None = None  # --refit-all: the CV estimate of the head (train.refit)


def build_net(recipe: Recipe, labels: list[str], input_size: tuple[int, int], weights: str | None,
              config: TrainConfig, preprocessing: Preprocessing, policy: str, fine_tuning: bool) -> Net:
    """Inference model and training wrapper under dtype policy `policy`; with `fine_tuning`, the
    backbone's top layers (the recipe's `fine_tune_from` on) are trainable."""
    keras = _keras()
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        inference, backbone = build_model(recipe, len(labels), input_size, weights, config.dropout,
                                          head_dtype=None if policy == "float32" else "float32")
        if fine_tuning:
            unfreeze_top(backbone, recipe.fine_tune_from)
        augmentation = Augmentation(flip=config.flip) if config.augment else None
        wrapper = training_model(inference, preprocessing, augmentation, config.seed)
    finally:
        keras.config.set_dtype_policy(previous)
    return Net(inference, backbone, wrapper, policy)
