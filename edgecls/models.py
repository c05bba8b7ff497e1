"""Backbone registry: a recipe (``models/<name>.toml``) plus a builder registered by name.

Recipes are data (input size, normalisation, where fine-tuning starts); builders are code. A new
Keras application backbone is one TOML file; a new architecture is one `@register_builder`.
Keras is imported only inside builders.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ._resources import table_dir
from .errors import OptionError
from .preprocess import Preprocessing


@dataclass(frozen=True)
class Recipe:
    name: str
    application: str
    input_size: tuple[int, int]
    normalization: str
    resize: str
    fine_tune_from: str
    weights: str
    description: str = ""

    def preprocessing(self, input_size: tuple[int, int] | None = None, resize: str | None = None) -> Preprocessing:
        """The recipe's preprocessing, at `input_size` and with `resize` where given."""
        return Preprocessing.named(self.normalization, input_size or self.input_size, resize or self.resize)


def recipes() -> dict[str, Recipe]:
    """All backbone recipes by name."""
    out = {}
    for path in sorted(table_dir("recipes", "models").glob("*.toml")):
        with open(path, "rb") as f:
            d = tomllib.load(f)
        first_line = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        out[d["name"]] = Recipe(
            name=d["name"], application=d.get("application", ""),
            input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
            normalization=d["normalization"], resize=d.get("resize", "stretch"),
            fine_tune_from=d.get("fine_tune_from", ""), weights=d.get("weights", "none"),
            description=first_line,
        )
    return out


def get_recipe(name: str) -> Recipe:
    table = recipes()
    if name not in table:
        raise OptionError(f"unknown backbone {name!r}; known backbones: {', '.join(sorted(table))}")
    return table[name]


Builder = Callable[[Recipe, tuple[int, int], Any], Any]
BUILDERS: dict[str, Builder] = {}


def register_builder(name: str) -> Callable[[Builder], Builder]:
    """Register the function that builds the feature extractor for recipes named `name`
    (or, under the name "keras_application", for any recipe with an `application`)."""

    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn

    return deco


def resolve_weights(weights: str | None) -> str | None:
    """`imagenet` (Keras download and cache), `none`, or a local weights file."""
    if weights is None or weights.lower() == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise OptionError(f"--weights {weights}: no such file; expected imagenet, none, or a .weights.h5 path")
    return str(path)


@register_builder("keras_application")
def build_keras_application(recipe: Recipe, input_size: tuple[int, int], weights: str | None):
    import keras

    ctor = getattr(keras.applications, recipe.application)
    kwargs: dict[str, Any] = dict(include_top=False, weights=weights, input_shape=(*input_size, 3))
    if recipe.application.startswith("MobileNetV3"):
        kwargs["include_preprocessing"] = True
    return ctor(**kwargs)


@register_builder("simple_cnn")
def build_simple_cnn(recipe: Recipe, input_size: tuple[int, int], weights: str | None):
    import keras
    from keras import layers

    if weights not in (None,):
        raise OptionError("simple_cnn has no pretrained weights; use --weights none")
    return keras.Sequential(
        [
            keras.Input((*input_size, 3)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
        ],
        name="simple_cnn",
    )


def build_feature_extractor(recipe: Recipe, input_size: tuple[int, int], weights: str | None):
    builder = BUILDERS.get(recipe.name) or (BUILDERS["keras_application"] if recipe.application else None)
    if builder is None:
        raise OptionError(f"backbone {recipe.name!r} has a recipe but no registered builder")
    return builder(recipe, input_size, weights)
