"""Grad-CAM explanations for Keras models, and the export-time model with a feature-map output.

Grad-CAM (Selvaraju et al. 2017) weights the last convolutional feature map by the spatially
averaged gradient of the class score (the pre-softmax logit) and keeps the positive part.
The explained layer is the last one with a 4-D output; the layers after it must form a chain
(pooling, dropout, dense), which holds for every edgecls model and for Keras applications.
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import cam as cam_mod
from .errors import ModelError, OptionError
from .keras_model import keras as _keras
from .preprocess import Preprocessing, read_rgb


def _node_output(layer):
    """The layer's output tensor in the graph that calls it (for a nested model, `layer.output`
    is the tensor inside its own graph, not the one the outer model is wired to)."""
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        raise ModelError(f"layer {layer.name!r} is used {len(nodes)} times; cannot pick its feature map")
    return nodes[0].output_tensors[0]


def _single_input(model):
    if len(model.inputs) != 1:
        raise ModelError(f"model {model.name!r} has {len(model.inputs)} inputs; explanations need one image input")
    return model.inputs[0]


def feature_layer_index(model) -> int:
    """Index in `model.layers` of the last layer with a 4-D (feature map) output."""
    for i in range(len(model.layers) - 1, -1, -1):
        shape = _node_output(model.layers[i]).shape if model.layers[i]._inbound_nodes else None
        if shape is not None and len(shape) == 4:
            return i
    raise ModelError(f"model {model.name!r} has no layer with a 4-D feature-map output to explain")


@dataclass
class SplitModel:
    """A model cut at its last feature map: `features(x)` and the head as a list of layers."""

    features: Any
    head: list
    feature_layer: str

    def logits(self, feature_map):
        """Class scores before the final activation (softmax saturates gradients)."""
        x = feature_map
        for layer in self.head[:-1]:
            x = layer(x, training=False) if _takes_training(layer) else layer(x)
        last = self.head[-1]
        if last.__class__.__name__ == "Dense":
            from keras import ops

            y = ops.matmul(x, last.kernel)
            return y + last.bias if last.use_bias else y
        return last(x)


def _takes_training(layer) -> bool:
    return layer.__class__.__name__ in ("Dropout", "BatchNormalization", "SpatialDropout2D")


def split_model(model) -> SplitModel:
    """Cut a Keras model after its last feature map; the rest must be a chain of single-input layers."""
    keras = _keras()
    index = feature_layer_index(model)
    head = model.layers[index + 1 :]
    previous = model.layers[index]
    for layer in head:
        inbound = layer._inbound_nodes
        parents = [t._keras_history.operation for t in inbound[0].input_tensors] if len(inbound) == 1 else []
        if len(parents) != 1 or parents[0] is not previous:
            raise ModelError(f"model {model.name!r}: the layers after {model.layers[index].name!r} are not a "
                             "simple chain (pooling, dropout, dense); Grad-CAM needs one")
        previous = layer
    if not head:
        raise ModelError(f"model {model.name!r} ends with a feature map; nothing to explain")
    features = keras.Model(_single_input(model), _node_output(model.layers[index]), name="features")
    return SplitModel(features, list(head), model.layers[index].name)


def grad_cam(model, inputs: np.ndarray, class_index: int | Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N, h, w) for normalised model inputs (N, H, W, 3) and the class scores (N, K).

    `class_index` picks the explained class (one for all, or one per input); by default the
    predicted class of each input. Maps are raw (not clipped or scaled).
    """
    keras = _keras()
    if keras.backend.backend() != "tensorflow":
        raise ModelError(f"Grad-CAM is implemented for the TensorFlow backend of Keras, not {keras.backend.backend()!r}")
    import tensorflow as tf

    split = getattr(model, "_edgecls_split", None)
    if split is None:
        split = split_model(model)
        model._edgecls_split = split  # cutting the graph costs more than explaining one image
    x = tf.convert_to_tensor(np.asarray(inputs, dtype=np.float32))
    fmap = split.features(x, training=False)
    with tf.GradientTape() as tape:
        tape.watch(fmap)
        logits = split.logits(fmap)
        if class_index is None:
            chosen = tf.argmax(logits, axis=1)
        else:
            chosen = tf.convert_to_tensor(np.broadcast_to(np.asarray(class_index), (x.shape[0],)), dtype=tf.int64)
        score = tf.gather(logits, chosen, axis=1, batch_dims=1)
    grads = tape.gradient(score, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    maps = tf.reduce_sum(weights * fmap, axis=-1)
    return maps.numpy(), logits.numpy()


def cam_kernel(model) -> np.ndarray:
    """Kernel (channels, classes) of the final dense layer of a global-average-pooling + dense head."""
    split = split_model(model)
    kinds = [layer.__class__.__name__ for layer in split.head]
    body = [k for k in kinds[:-1] if k not in ("Dropout",)]
    if kinds[-1] != "Dense" or body != ["GlobalAveragePooling2D"]:
        raise ModelError(f"model {model.name!r}: on-device CAM needs a global average pooling + dense head, "
                         f"this head is {' -> '.join(kinds)}")
    from keras import ops

    return np.asarray(ops.convert_to_numpy(split.head[-1].kernel), dtype=np.float32)


def with_feature_output(model, feature_first: bool = False):
    """The same model with a second output, its last feature map (for on-device CAM).

    Outputs are [probabilities, feature_map], or the reverse with `feature_first` (the TFLite
    converter lists a SavedModel's outputs in reverse, see `export_explain_model`). Raises
    ModelError unless the head is global average pooling + dense.
    """
    keras = _keras()
    cam_kernel(model)  # the check: CAM on the device needs a GAP + dense head
    feature = _node_output(model.layers[feature_layer_index(model)])
    outputs = [feature, model.outputs[0]] if feature_first else [model.outputs[0], feature]
    return keras.Model(_single_input(model), outputs, name=f"{model.name}_explain")


def export_explain_model(keras_model, artifact_path: str | Path, format: str = "tflite") -> Any:
    """For the exporter: the two-output Keras model to convert in place of `keras_model`, after
    writing its CAM weights beside the artifact (``ARTIFACT.cam.npz``).

    Outputs are ordered so that the converted artifact's first output is the probabilities
    (runtimes and the accuracy gate read the first output): TFLite's converter reverses them.
    """
    if format not in ("tflite", "onnx"):
        raise OptionError(f"the explain option supports tflite and onnx exports, not {format!r}")
    cam_mod.save_cam_weights(artifact_path, cam_kernel(keras_model))
    return with_feature_output(keras_model, feature_first=format == "tflite")


# --- explaining images with a trained .keras model -------------------------------------------


def _load(model_path: Path):
    from .keras_model import KerasScorer

    return KerasScorer(model_path)


def explain_images(model_path: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                   class_name: str | None = None) -> list[dict[str, Any]]:
    """Grad-CAM overlays (PNG) for the predicted class, or `class_name`, of each image."""
    scorer = _load(Path(model_path))
    labels = list(scorer.labels)
    if class_name is not None and class_name not in labels:
        raise OptionError(f"--class {class_name!r} is not one of the model's labels: {', '.join(labels)}")
    out_dir = Path(out_dir)
    results = []
    for path in images:
        rgb = read_rgb(path)
        results.append(_explain_one(scorer.model, scorer.preprocessing, labels, rgb, Path(path).stem, out_dir,
                                    labels.index(class_name) if class_name else None))
        results[-1]["image"] = str(path)
    return results


def _explain_one(model, preprocessing: Preprocessing, labels: list[str], rgb: np.ndarray, stem: str,
                 out_dir: Path, class_index: int | None) -> dict[str, Any]:
    x = preprocessing(rgb)[None]
    maps, logits = grad_cam(model, x, class_index)
    probs = _probabilities(model, logits)
    predicted = int(np.argmax(probs[0]))
    chosen = predicted if class_index is None else class_index
    heat = cam_mod.heat_on_picture(rgb, maps[0], preprocessing)
    out = out_dir / f"{stem}.{cam_mod.safe_file_name(labels[chosen])}.gradcam.png"
    cam_mod.write_png(out, cam_mod.overlay(rgb, heat))
    return {"predicted": labels[predicted], "probability": float(probs[0, predicted]),
            "explained": labels[chosen], "overlay": str(out)}


def _probabilities(model, scores: np.ndarray) -> np.ndarray:
    """Probabilities from the head's scores, decided by the model's structure, never by the values:
    a Dense head gives pre-activation logits (softmax them); a head ending in its own Softmax layer
    gives probabilities already. Saves the second forward pass that a comparison would need."""
    from .runtime import softmax

    last = model.layers[-1]
    kind = last.__class__.__name__
    own_softmax = kind == "Softmax" or (kind == "Activation" and getattr(last.activation, "__name__", "") == "softmax")
    return scores if own_softmax else softmax(scores)


def mistakes_gallery(model_path: str | Path, dataset: str | Path, out_dir: str | Path, split: str = "val",
                     limit: int = 100) -> dict[str, Any]:
    """An HTML page of the images of `split` the model gets wrong, each with Grad-CAM overlays for
    the predicted and the true class. Returns counts and the page's path."""
    from . import data as data_mod
    from .files import atomic_write_text

    if limit < 1:
        raise OptionError(f"limit must be at least 1, got {limit}")
    scorer = _load(Path(model_path))
    labels = list(scorer.labels)
    folder = data_mod.scan(dataset)
    to_model = data_mod.label_indices(folder, labels)
    parts = data_mod.recorded_split(folder, scorer.manifest.source.get("split"))
    if split not in parts:
        raise OptionError(f"unknown split {split!r}; expected one of {', '.join(parts)}")
    loaded = data_mod.load_images(folder, parts[split], scorer.preprocessing)
    probs = scorer.scores_resized(loaded.images)
    truth = to_model[loaded.targets]
    wrong = np.flatnonzero(probs.argmax(1) != truth)[:limit]
    out_dir = Path(out_dir)
    rows = []
    for i in wrong:
        file = Path(loaded.files[i])
        rgb = read_rgb(file)
        stem = f"{len(rows):03d}_{cam_mod.safe_file_name(file.stem)}"
        pred = _explain_one(scorer.model, scorer.preprocessing, labels, rgb, stem, out_dir / "overlays", None)
        true = _explain_one(scorer.model, scorer.preprocessing, labels, rgb, stem, out_dir / "overlays", int(truth[i]))
        rows.append({"file": str(file), "true": labels[truth[i]], "predicted": pred["predicted"],
                     "probability": pred["probability"], "overlay_predicted": pred["overlay"],
                     "overlay_true": true["overlay"]})
    page = out_dir / "mistakes.html"
    atomic_write_text(page, _gallery_html(rows, Path(model_path).name, split, len(loaded.targets), out_dir))
    atomic_write_text(out_dir / "mistakes.json", json.dumps(rows, indent=2) + "\n")
    return {"page": str(page), "count": len(loaded.targets), "wrong": int(np.sum(probs.argmax(1) != truth)),
            "shown": len(rows), "rows": rows}


def _gallery_html(rows: list[dict[str, Any]], model_name: str, split: str, count: int, out_dir: Path) -> str:
    e = html.escape
    cells = []
    for r in rows:
        rel_p = Path(r["overlay_predicted"]).relative_to(out_dir).as_posix()
        rel_t = Path(r["overlay_true"]).relative_to(out_dir).as_posix()
        cells.append(
            f"<figure><img src=\"{e(rel_p)}\" alt=\"predicted\"><img src=\"{e(rel_t)}\" alt=\"true\">"
            f"<figcaption><b>{e(Path(r['file']).name)}</b><br>true <b>{e(r['true'])}</b>, predicted "
            f"<b>{e(r['predicted'])}</b> ({r['probability']:.2f})<br><small>left: evidence for the prediction; "
            f"right: for the true class</small></figcaption></figure>")
    body = "\n".join(cells) or "<p>No mistakes on this split.</p>"
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        f"<title>{e(model_name)}: mistakes on {e(split)}</title>"
        "<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:.5em;"
        "vertical-align:top;width:420px}img{width:200px;margin-right:4px}</style></head><body>"
        f"<h1>{e(model_name)}: {len(rows)} mistakes on the {e(split)} split ({count} images)</h1>\n"
        f"{body}\n</body></html>\n")
