"""Transfer learning on the real flowers photos: ImageNet weights versus none."""
from __future__ import annotations

import json

import pytest

from tests.conftest import FLOWERS_CONFIG


def test_imagenet_transfer_reaches_070(flowers_model):
    val = flowers_model.metrics["val"]
    assert val["accuracy"] >= 0.70, val["accuracy"]
    assert val["count"] == 40
    assert set(val["per_class"]) == {"daisy", "dandelion", "roses", "sunflowers", "tulips"}
    assert 0 < val["macro"]["f1"] <= 1


def test_training_writes_model_curves_and_two_phases(flowers_model):
    out = flowers_model.out_dir
    for name in ("model.keras", "model.keras.json", "labels.txt", "history.json", "training_curves.png",
                 "confusion_matrix.png", "metrics.json"):
        assert (out / name).stat().st_size > 0, name
    history = json.loads((out / "history.json").read_text())
    assert 0 < history["phase_boundary"] < len(history["loss"])  # fine-tuning ran after the head phase
    assert (out / "labels.txt").read_text().split() == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    manifest = json.loads((out / "model.keras.json").read_text())
    assert manifest["preprocessing"]["normalization"] == "tf" and manifest["preprocessing"]["size"] == [224, 224]


def test_without_pretrained_weights_stays_near_chance(flowers, flowers_model, tmp_path):
    from edgecls.train import TrainConfig, train

    # 96 px: the whole network trains without pretrained weights, which costs more per epoch.
    config = {**FLOWERS_CONFIG, "epochs": 5, "fine_tune_epochs": 0, "input_size": (96, 96)}
    scratch = train(flowers, tmp_path, TrainConfig(weights="none", **config))
    chance_level = scratch.metrics["val"]["accuracy"]
    assert chance_level <= 0.45, chance_level  # chance is 0.2 for five balanced classes
    assert flowers_model.metrics["val"]["accuracy"] - chance_level >= 0.3


def test_bad_weights_path_is_a_clear_error(flowers, tmp_path):
    from edgecls.errors import OptionError
    from edgecls.train import TrainConfig, train

    with pytest.raises(OptionError, match="no such file"):
        train(flowers, tmp_path, TrainConfig(weights=str(tmp_path / "missing.weights.h5")))


def test_manifest_records_the_split_files(flowers, flowers_model):
    from edgecls import data

    split = json.loads((flowers_model.out_dir / "model.keras.json").read_text())["source"]["split"]
    assert {k: len(v) for k, v in split["files"].items()} == {"train": 160, "val": 40, "test": 0}
    parts = data.recorded_split(data.scan(flowers), split)
    assert sorted(data.scan(flowers).files[i].relative_to(flowers).as_posix() for i in parts["val"]) == \
        sorted(split["files"]["val"])


def test_no_pretrained_weights_trains_the_whole_backbone(mobilenet_weights):
    """`--weights none` used to leave a frozen random MobileNetV2 under a trainable head."""
    from edgecls.models import get_recipe
    from edgecls.train import build_model

    recipe = get_recipe("mobilenet_v2")
    scratch, backbone = build_model(recipe, 5, (64, 64), None)
    assert backbone.trainable
    trainable = sum(int(w.numpy().size) for w in scratch.trainable_weights)
    assert trainable > 2_000_000  # MobileNetV2's 2.2 M convolution weights, not the 6,405 of the head
    pretrained, backbone = build_model(recipe, 5, (224, 224), str(mobilenet_weights))
    assert not backbone.trainable
    assert sum(int(w.numpy().size) for w in pretrained.trainable_weights) == 1280 * 5 + 5
