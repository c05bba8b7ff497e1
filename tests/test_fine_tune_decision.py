"""Training decides from the data whether to fine-tune (`edgecls.train.decide`): both estimates on
the validation split, the paired gain and its uncertainty are recorded, and the decision follows
them on a case where it must fine-tune and one where it must not. Real photos, real MobileNetV2
ImageNet weights, the real command line; small inputs keep each run around a minute."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli


def _outcomes(only_tuned: int, only_head: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    head = np.array([False] * only_tuned + [True] * only_head + [True] * both + [False] * neither)
    tuned = np.array([True] * only_tuned + [False] * only_head + [True] * both + [False] * neither)
    return head, tuned


@pytest.mark.parametrize("only_tuned, only_head, both, neither, decision", [
    (1, 0, 35, 4, "feature head"),    # one photo on 40 is within the noise
    (3, 0, 33, 4, "fine-tune"),       # +7.5 points, SE 4.6
    (9, 2, 270, 19, "fine-tune"),     # +2.3 points on 300, SE 1.1
    (4, 4, 280, 12, "feature head"),  # as many lost as won
    (2, 6, 280, 12, "feature head"),  # fine-tuning worse
])
def test_the_rule_fine_tunes_only_when_the_gain_exceeds_its_uncertainty(only_tuned, only_head, both, neither, decision):
    from edgecls.train.decide import choose

    record = choose(*_outcomes(only_tuned, only_head, both, neither))
    assert record["decision"] == decision
    assert (record["gain"] > record["gain_se"]) == (decision == "fine-tune")
    assert record["only_fine_tuned_right"] == only_tuned and record["only_head_right"] == only_head
    assert 0 <= record["feature_head"]["ci95"][0] <= record["feature_head"]["accuracy"] <= record["feature_head"]["ci95"][1]


def _decision(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    manifest = json.loads((out / "model.keras.json").read_text())
    assert manifest["source"]["training"]["fine_tune_decision"] == metrics["fine_tune_decision"]
    return metrics["fine_tune_decision"]


def _top_kernel(model: Path, size: int) -> np.ndarray:
    from edgecls.keras_model import load_keras_model

    backbone = load_keras_model(model).get_layer(f"mobilenetv2_1.00_{size}")
    return backbone.get_layer("block_16_project").get_weights()[0]


def _imagenet_top_kernel(weights: Path, size: int) -> np.ndarray:
    from edgecls.keras_model import keras

    net = keras().applications.MobileNetV2(include_top=False, weights=str(weights), input_shape=(size, size, 3))
    return net.get_layer("block_16_project").get_weights()[0]


def test_digits_far_from_imagenet_are_fine_tuned(tmp_path, mobilenet_weights):
    """8x8 digit scans at 32 px: frozen ImageNet features leave the head near 0.55, fine-tuning
    the top reaches ~0.75 on the same validation photos (+20 points, SE ~3): it must fine-tune."""
    from edgecls.workflows import write_digits_dataset

    data = write_digits_dataset(tmp_path / "digits")
    for photo in sorted(data.rglob("*.png"))[1::2]:  # every other scan: half the time, the same verdict
        photo.unlink()
    out = tmp_path / "digits_run"
    result = run_cli("train", data, "--weights", mobilenet_weights, "--input-size", "32", "--no-flip", "--out", out)
    assert result.returncode == 0, result.stderr
    decision = _decision(out)
    assert decision["decision"] == "fine-tune", decision
    assert decision["gain"] > 3 * decision["gain_se"] and 150 < decision["validation_count"] < 200
    assert f"fine-tuning decision on {decision['validation_count']} validation photos: feature head" in result.stderr
    # The kept model is the fine-tuned one: its top moved from the ImageNet weights, its validation
    # accuracy is the fine-tuned estimate, and the curves show phase 2's epochs.
    assert not np.allclose(_top_kernel(out / "model.keras", 32), _imagenet_top_kernel(mobilenet_weights, 32))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == pytest.approx(decision["fine_tuned"]["accuracy"], abs=1e-6)
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == history["phase_boundary"] + decision["fine_tuned"]["epochs"]


def test_colour_versus_grey_photos_keep_the_head(tmp_path, flowers, mobilenet_weights):
    """Flowers in colour against other flowers in grey: the frozen features already separate
    them (~0.97 on 40 validation photos), so fine-tuning cannot gain beyond its uncertainty and the
    head stays, the backbone's weights untouched."""
    import cv2

    photos = sorted(p for c in flowers.iterdir() if c.is_dir() for p in c.iterdir() if p.suffix.lower() == ".jpg")
    data = tmp_path / "colour"
    for i, photo in enumerate(photos):
        cls = "grey" if i % 2 else "colour"
        (data / cls).mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(photo))
        if cls == "grey":
            image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(data / cls / f"{photo.stem}.png"), image)
    out = tmp_path / "colour_run"
    result = run_cli("train", data, "--weights", mobilenet_weights, "--input-size", "96", "--out", out)
    assert result.returncode == 0, result.stderr
    decision = _decision(out)
    assert decision["decision"] == "feature head" and decision["gain"] <= decision["gain_se"], decision
    assert np.array_equal(_top_kernel(out / "model.keras", 96), _imagenet_top_kernel(mobilenet_weights, 96))
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == history["phase_boundary"]  # no fine-tuning epochs


def test_fine_tune_epochs_still_decides(tmp_path, flowers, mobilenet_weights):
    """`--fine-tune-epochs 0` keeps the head without a trial; the record says it was told."""
    out = tmp_path / "told"
    result = run_cli("train", flowers, "--weights", mobilenet_weights, "--input-size", "64", "--fine-tune-epochs", "0",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert _decision(out) == {"decision": "feature head", "rule": "given: --fine-tune-epochs 0"}
    assert "fine-tuning trial" not in result.stderr
