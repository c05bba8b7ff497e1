"""The artifact a Pi or a Coral runs (full-integer LiteRT int8) of the default feature-head model,
judged on photos that neither training, calibration nor the export gate saw; and `export
--target` never ending empty-handed when the gate refuses the target's first artifact.

A real small model: the shared ImageNet MobileNetV2 at 128 px with the logistic feature head
(`--fine-tune-epochs 0`: the feature-head model itself), trained on 30 flowers photos per class;
the other 10 per class are held out. Real converters, the device runtime, the real command line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import run_cli

SIZE = "128"
HELD_OUT_PER_CLASS = 10


@pytest.fixture(scope="module")
def split(flowers, tmp_path_factory) -> tuple[Path, Path]:
    """flowers-small as train/ (30 per class) and held_out/ (10 per class), by file name order."""
    root = tmp_path_factory.mktemp("flowers_split")
    for cls in sorted(p for p in flowers.iterdir() if p.is_dir()):
        photos = sorted(p for p in cls.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        for part, chosen in (("held_out", photos[:HELD_OUT_PER_CLASS]), ("train", photos[HELD_OUT_PER_CLASS:])):
            (root / part / cls.name).mkdir(parents=True, exist_ok=True)
            for photo in chosen:
                os.symlink(photo, root / part / cls.name / photo.name)
    return root / "train", root / "held_out"


@pytest.fixture(scope="module")
def head_model(split, mobilenet_weights, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("feature_head_model")
    result = run_cli("train", split[0], "--weights", mobilenet_weights, "--input-size", SIZE, "--fine-tune-epochs", "0",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    return out / "model.keras"


def _answers(model: Path, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 of each photo of `folder` (the Keras model or an artifact through the runtime), and the truth."""
    from edgecls import data

    images = data.scan(folder)
    if model.suffix == ".keras":
        from edgecls.keras_model import KerasScorer

        scorer = KerasScorer(model)
        loaded = data.load_images(images, range(len(images.files)), scorer.manifest.preprocessing)
        return scorer.scores_resized(loaded.images).argmax(1), loaded.targets
    from edgecls.runtime import Classifier

    clf = Classifier.from_artifact(model)
    loaded = data.load_images(images, range(len(images.files)), clf.preprocessing)
    return clf.scores(loaded.images).argmax(1), loaded.targets


def test_full_integer_int8_of_the_feature_head_model_agrees_on_held_out_photos(head_model, split, tmp_path):
    out = tmp_path / "export"
    result = run_cli("export", head_model, "--format", "tflite", "--quant", "int8", "--out", out)
    assert result.returncode == 0, result.stderr
    artifact = out / "model_int8.tflite"
    # Full integer, Edge TPU-ready: uint8 in and out, every activation and weight integer (int32 biases).
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(artifact))
    interpreter.allocate_tensors()
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8 == interpreter.get_output_details()[0]["dtype"]
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert kinds <= {np.int8, np.uint8, np.int32}, kinds
    scheme = json.loads((out / "model_int8.tflite.json").read_text())["source"]["quantization_scheme"]
    assert scheme["kept_float"] == [] and scheme["calibration"].startswith("least squared error")
    keras, truth = _answers(head_model, split[1])
    int8, _ = _answers(artifact, split[1])
    # Measured here: 48 of 50 held-out photos agree (the Keras model itself is right on 37: this
    # small 128 px model leaves many photos near a tie, where int8 flips first), the same on AVX2
    # and VNNI hosts (LiteRT's int8 kernels widen to 32 bits on both); with the converter's min/max
    # ranges and no bias correction it was 45. The 0.99 is not met on this model (README).
    agreement = float(np.mean(int8 == keras))
    assert agreement >= 0.94, f"held-out agreement {agreement:.3f}"
    assert np.mean(int8 == truth) >= np.mean(keras == truth) - 0.04


@pytest.fixture(scope="module")
def tied_model(head_model, tmp_path_factory) -> Path:
    """The feature-head model with its logits scaled by 1/1000: every photo's classes within ~1e-4
    of each other in probability. The float model still ranks them; an int8 softmax, with steps of
    1/256, ties them all, so the int8 and mixed artifacts must be refused, the float ones not."""
    from edgecls.files import sha256_file
    from edgecls.keras_model import load_keras_model, save_keras_model
    from edgecls.manifest import load_manifest

    model = load_keras_model(head_model)
    head = model.get_layer("probabilities")
    kernel, bias = head.get_weights()
    head.set_weights([kernel / 1000, bias / 1000])
    out = tmp_path_factory.mktemp("tied") / "model.keras"
    save_keras_model(model, out)
    manifest = load_manifest(head_model)
    manifest.artifact_sha256 = sha256_file(out)
    manifest.save(out)
    return out


def test_a_target_falls_back_to_its_next_artifact_and_says_so(tied_model, tmp_path):
    out = tmp_path / "pi"
    result = run_cli("export", tied_model, "--target", "raspberrypi4", "--out", out)
    assert result.returncode == 0, result.stderr
    text = result.stdout + result.stderr
    assert "tflite:int8        FAILED  accuracy gate failed" in text, text
    assert "what could help tflite:int8: calibration photos closer to what the device sees (--calibration DIR" in text
    assert "--fine-tune-epochs 5" in text and "tflite:mixed" in text
    kept = [p.name for p in out.glob("model_*.tflite")]
    assert len(kept) == 1 and kept[0] in ("model_fp16.tflite", "model_fp32.tflite"), kept
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("raspberrypi4 should run"))
    assert kept[0] in line and " MB, " in line and "ms per image on this host" in line and "refused before it: tflite:int8" in line
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["device_artifact"].endswith(kept[0])
    assert not (out / "model_int8.tflite").exists() and not list(out.glob(".staging-*"))


def test_strict_and_a_target_without_a_float_way_out_fail(tied_model, tmp_path):
    strict = run_cli("export", tied_model, "--target", "raspberrypi4", "--strict", "--out", tmp_path / "strict")
    assert strict.returncode == 1 and "exporting tflite:int8\n" in strict.stderr, strict.stderr
    tried = [line.split()[0] for line in strict.stderr.splitlines() if line.split()[1:2] in (["ok"], ["FAILED"])]
    assert tried == ["tflite:int8"], strict.stderr
    assert not list((tmp_path / "strict").glob("model_*"))
    coral = run_cli("export", tied_model, "--target", "coral-usb", "--out", tmp_path / "coral")
    assert coral.returncode == 1
    assert "the Edge TPU runs only full-integer models" in coral.stderr
    assert "coral-usb: no artifact passed the gate" in coral.stderr
    # --strict names what it applies to
    alone = run_cli("export", tied_model, "--strict", "--out", tmp_path / "x")
    assert alone.returncode == 2 and "--strict applies to --target" in alone.stderr
