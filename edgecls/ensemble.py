"""One Keras model that averages the probabilities of several trained edgecls models.

Members may differ in backbone, input size and normalisation: the ensemble takes the largest
input size; each member gets, inside the graph, a Resizing layer to its own size and a fixed
1x1 convolution that turns the ensemble's normalisation into its own (channel order included).
Only stock Keras layers are used, so the ensemble saves, loads, exports and runs like any model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ModelError, OptionError
from .files import atomic_write_json, atomic_write_text
from .keras_model import keras as _keras, keras_manifest, load_keras_model, save_keras_model
from .manifest import Manifest, load_manifest
from .outputs import refuse_overlaps
from .preprocess import Preprocessing


@dataclass
class EnsembleResult:
    model_path: Path
    labels: list[str]
    members: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _member_manifests(paths: Sequence[Path]) -> list[Manifest]:
    manifests = []
    for path in paths:
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        if path.suffix != ".keras":
            raise ModelError(f"{path}: ensemble members must be .keras models trained by edgecls")
        manifest = load_manifest(path)
        if manifest is None or manifest.format != "keras":
            raise ModelError(f"{path}: needs the manifest written by `edgecls train` ({path.name}.json)")
        manifests.append(manifest)
    return manifests


def ensemble_preprocessing(members: Sequence[Preprocessing]) -> Preprocessing:
    """The preprocessing the ensemble's input gets: the members' own when they all agree on
    normalisation, else raw pixels (0..255); the largest input size; their common resize mode."""
    modes = {(p.resize, round(p.crop_fraction, 6), p.interpolation) for p in members}
    if len(modes) > 1:
        raise OptionError(f"members resize differently ({sorted(modes)}); one resize mode and interpolation "
                          "is needed for one input")
    size = max((p.size for p in members), key=lambda s: s[0] * s[1])
    first = members[0]
    same_norm = all((p.channel_order, p.scale, p.mean, p.std) == (first.channel_order, first.scale, first.mean, first.std)
                    for p in members)
    if not same_norm:
        return Preprocessing.named("raw", size, first.resize, first.crop_fraction, first.interpolation)
    return dataclasses.replace(first, size=tuple(size))


def _affine(src: Preprocessing, dst: Preprocessing) -> tuple[np.ndarray, np.ndarray] | None:
    """Kernel (3, 3) and bias (3,) mapping `src`-normalised inputs to `dst`-normalised ones, or
    None when they are the same. Both are affine in the pixel value, per channel."""
    def forward(p: Preprocessing):
        # model input channel j = pixel[perm[j]] * a[j] + b[j]
        perm = [2, 1, 0] if p.channel_order == "BGR" else [0, 1, 2]
        a = np.float64(p.scale) / np.asarray(p.std, dtype=np.float64)
        b = -np.asarray(p.mean, dtype=np.float64) / np.asarray(p.std, dtype=np.float64)
        return perm, a, b

    sp, sa, sb = forward(src)
    dp, da, db = forward(dst)
    if (sp, list(sa), list(sb)) == (dp, list(da), list(db)):
        return None
    kernel, bias = np.zeros((3, 3)), np.zeros(3)
    for j in range(3):          # destination channel j reads pixel channel dp[j]
        i = sp.index(dp[j])     # ...which is source channel i: pixel = (x_i - sb_i) / sa_i
        kernel[i, j] = da[j] / sa[i]
        bias[j] = db[j] - da[j] * sb[i] / sa[i]
    return kernel.astype(np.float32), bias.astype(np.float32)


def build_ensemble_model(members: Sequence[Any], member_pre: Sequence[Preprocessing], pre: Preprocessing,
                         activations: Sequence[str]):
    """The averaging Keras model over loaded member models."""
    keras = _keras()
    h, w = pre.size
    image = keras.Input((h, w, 3), name="image")
    outputs = []
    for i, (model, mp, act) in enumerate(zip(members, member_pre, activations)):
        x = image
        if tuple(mp.size) != (h, w):
            x = keras.layers.Resizing(mp.size[0], mp.size[1], interpolation="bilinear", name=f"resize_{i}")(x)
        mapping = _affine(pre, mp)
        if mapping is not None:
            conv = keras.layers.Conv2D(3, 1, name=f"normalize_{i}", trainable=False)
            x = conv(x)
            conv.set_weights([mapping[0][None, None], mapping[1]])
        wrapped = keras.Model(model.inputs[0], model.outputs[0], name=f"member_{i}")
        y = wrapped(x, training=False)
        if act == "logits":
            y = keras.layers.Softmax(name=f"softmax_{i}")(y)
        outputs.append(y)
    averaged = keras.layers.Average(name="probabilities")(outputs)
    return keras.Model(image, averaged, name="edgecls_ensemble")


def _check_members(paths: Sequence[Path]) -> tuple[list[Manifest], list[str]]:
    """The members' manifests (same labels required) and warnings about their datasets."""
    if len(paths) < 2:
        raise OptionError(f"an ensemble needs at least two models, got {len(paths)}")
    if len({p.resolve() for p in paths}) != len(paths):
        raise OptionError("the same model is listed twice; an ensemble of copies adds nothing")
    manifests = _member_manifests(paths)
    labels = manifests[0].labels
    for path, m in zip(paths, manifests):
        if m.labels != labels:
            raise ModelError(f"{path}: labels {m.labels} differ from {paths[0].name}'s {labels}; "
                             "members must be trained on the same classes")
    warnings = []
    splits = {json.dumps(m.source.get("split"), sort_keys=True) for m in manifests}
    datasets = {m.source.get("dataset") for m in manifests}
    if len(splits) > 1 or len(datasets) > 1:
        warnings.append("members were trained on different datasets or splits: one member's validation images "
                        "may be another's training images, so the ensemble's validation accuracy is optimistic")
    return manifests, warnings


def build_ensemble(model_paths: Sequence[str | Path], out_dir: str | Path, dataset: str | Path | None = None,
                   ) -> EnsembleResult:
    """Average several .keras models into one, save it with a manifest (so export, evaluate and
    bench take it unchanged) and report its validation accuracy against each member's."""
    paths = [Path(p) for p in model_paths]
    manifests, warnings = _check_members(paths)
    out_dir = Path(out_dir)
    refuse_overlaps({**{f"member {i + 1}": p for i, p in enumerate(paths)}, "dataset": dataset},
                    folders={"--out": out_dir})
    labels, first = manifests[0].labels, manifests[0]
    member_pre = [m.preprocessing for m in manifests]
    pre = ensemble_preprocessing(member_pre)
    activations = [m.output.get("activation", "softmax") for m in manifests]
    model = build_ensemble_model([load_keras_model(p) for p in paths], member_pre, pre, activations)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = save_keras_model(model, out_dir / "model.keras")
    atomic_write_text(out_dir / "labels.txt", "\n".join(labels) + "\n")
    source = {"backbone": "ensemble(" + ",".join(str(m.source.get("backbone")) for m in manifests) + ")",
              "dataset": str(dataset) if dataset else first.source.get("dataset"),
              "split": first.source.get("split"),
              "members": [{"model": str(p.resolve()), "sha256": m.artifact_sha256, "backbone": m.source.get("backbone"),
                           "input_size": list(m.preprocessing.size)} for p, m in zip(paths, manifests)]}
    manifest = keras_manifest(model_path, labels, pre, source)
    manifest.save(model_path)
    result = EnsembleResult(model_path, labels, [str(p) for p in paths], warnings=warnings)
    ds = Path(dataset) if dataset else Path(first.source.get("dataset") or "")
    if str(ds) not in ("", ".") and ds.is_dir():
        result.metrics = compare_on_validation(model_path, paths, ds)
        manifest.verification = {"val_accuracy": result.metrics["ensemble"]["accuracy"],
                                 "val_count": result.metrics["count"]}
        manifest.save(model_path)
        atomic_write_json(out_dir / "metrics.json", {**result.metrics, "warnings": warnings})
    else:
        result.warnings.append(f"{ds}: dataset not found; the ensemble was not evaluated (pass --dataset)")
    return result


def compare_on_validation(model_path: Path, member_paths: Sequence[Path], dataset: Path) -> dict:
    """Accuracy, balanced accuracy and macro F1 of the ensemble and each member on the ensemble's
    recorded validation split (each model sees the images through its own preprocessing)."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from . import data as data_mod
    from .keras_model import KerasScorer

    ens = KerasScorer(model_path)
    folder = data_mod.scan(dataset)
    to_model = data_mod.label_indices(folder, ens.labels)
    parts, split, _ = data_mod.evaluation_split(folder, ens.manifest.source)  # another folder: all of it
    idx = parts[split]
    rows = {}
    count = 0
    for name, path in [("ensemble", model_path)] + [(f"member_{i}", p) for i, p in enumerate(member_paths)]:
        scorer = ens if path == model_path else KerasScorer(path)
        loaded = data_mod.load_images(folder, idx, scorer.preprocessing)
        y, pred = to_model[loaded.targets], scorer.scores_resized(loaded.images).argmax(1)
        count = len(y)
        rows[name] = {"model": str(path), "accuracy": float(accuracy_score(y, pred)),
                      "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                      "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0))}
    best = max((k for k in rows if k != "ensemble"), key=lambda k: rows[k]["accuracy"])
    return {**rows, "count": count, "split": split, "best_member": best,
            "gain_over_best_member_pp": round(100 * (rows["ensemble"]["accuracy"] - rows[best]["accuracy"]), 2)}
