"""Every (format, mode) of the registry at a small input size, the accuracy gate, bad options."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgecls.errors import OptionError
from edgecls.export import FORMATS, resolve
from edgecls.runtime import Classifier
from tests.conftest import run_cli


@pytest.fixture(scope="session")
def small_model(tmp_path_factory, flowers, mobilenet_weights):
    from edgecls.train import TrainConfig, train

    out = tmp_path_factory.mktemp("flowers96")
    return train(flowers, out, TrainConfig(weights=str(mobilenet_weights), input_size=(96, 96), epochs=4,
                                           fine_tune_epochs=0, seed=0))


@pytest.fixture(scope="session")
def matrix(small_model):
    from edgecls.export.pipeline import export_model

    reports = export_model(small_model.model_path, "all", "all", out_dir=small_model.out_dir / "matrix",
                           max_accuracy_drop=100.0, calibration_count=100)
    return {r.key: r for r in reports}


@pytest.mark.parametrize("key", sorted(f"{f}:{q}" for f, q in FORMATS))
def test_every_format_and_mode_exports_and_runs(matrix, key, assets):
    report = matrix[key]
    assert report.passed, report.error
    path = Path(report.path)
    assert path.exists() and Path(str(path) + ".json").exists()
    assert report.top1_agreement >= 0.85, report.top1_agreement
    if key.endswith(("fp32", "fp16")):
        assert report.top1_agreement >= 0.975 and report.max_prob_diff < 0.05
    clf = Classifier.from_artifact(path)
    manifest = clf.manifest
    assert manifest.quantization == key.split(":")[1] and manifest.preprocessing.size == (96, 96)
    daisy = sorted((assets / "data/flowers-small/daisy").iterdir())[0]
    assert clf.predict(daisy, 1)[0][0] in manifest.labels


def test_quantized_inputs_and_sizes(matrix):
    int8 = Classifier.from_artifact(matrix["tflite:int8"].path)
    assert int8.engine.input.dtype == np.uint8 and int8.engine.input.quantized
    tpu = Classifier.from_artifact(matrix["tflite:edgetpu"].path)
    assert tpu.engine.input.shape == (1, 96, 96, 3) and tpu.engine.input.dtype == np.uint8
    assert tpu.engine.output.dtype == np.uint8
    notes = matrix["tflite:edgetpu"].notes["edgetpu"]
    if not shutil.which("edgetpu_compiler"):
        assert notes["compiled"] is False and notes["command"].startswith("edgetpu_compiler -s -o ")
    fp32 = {k.split(":")[0]: matrix[k].size_bytes for k in matrix if k.endswith("fp32")}
    for fmt in ("tflite", "onnx", "openvino"):
        assert matrix[f"{fmt}:fp16"].size_bytes < 0.65 * fp32[fmt]
        assert matrix[f"{fmt}:int8"].size_bytes < 0.45 * fp32[fmt]
    assert matrix["tflite:dynamic"].size_bytes < 0.45 * fp32["tflite"]


@pytest.mark.parametrize("key", ["tflite:int8", "onnx:int8", "openvino:fp16"])
def test_embedded_metadata_configures_runtime_without_sidecar(matrix, key, tmp_path):
    src = Path(matrix[key].path)
    for f in src.parent.glob(src.stem + ".*"):
        if not f.name.endswith(".json"):
            shutil.copy(f, tmp_path / f.name)
    clf = Classifier.from_artifact(tmp_path / src.name)  # no .json beside it
    assert clf.labels == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert clf.preprocessing == Classifier.from_artifact(src).preprocessing


def test_int8_io_dtype_option(small_model, tmp_path):
    from edgecls.export.pipeline import export_model

    (report,) = export_model(small_model.model_path, "tflite", "int8", out_dir=tmp_path, io_dtype="int8",
                             max_accuracy_drop=100.0, calibration_count=50)
    clf = Classifier.from_artifact(report.path)
    assert clf.engine.input.dtype == np.int8 and clf.engine.output.dtype == np.int8
    assert report.top1_agreement >= 0.85


def test_gate_rejects_badly_calibrated_artifact(small_model, tmp_path):
    calib = tmp_path / "black"
    calib.mkdir()
    for i in range(8):
        cv2.imwrite(str(calib / f"{i}.png"), np.zeros((96, 96, 3), np.uint8))
    out = tmp_path / "out"
    result = run_cli("export", small_model.model_path, "--format", "tflite", "--quant", "int8",
                     "--calibration", calib, "--out", out, "--max-accuracy-drop", "1.0")
    assert result.returncode == 1, result.stderr
    text = result.stderr.replace("\n", " ")
    assert "accuracy gate failed" in text and "more than the allowed 1.00 pp" in text
    assert not list(out.glob("*.tflite")) and not list(out.glob(".staging*"))  # nothing deployable left
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["artifacts"][0]["passed"] is False and summary["artifacts"][0]["accuracy_drop_pp"] > 1.0


@pytest.mark.parametrize("formats,quants,options,message", [
    ("tensorrt", "fp32", {}, "unknown format 'tensorrt'"),
    ("onnx", "dynamic", {}, "format onnx has no 'dynamic' mode; it has: fp32, fp16, int8"),
    ("tflite", "int4", {}, "unknown quantization 'int4'"),
    ("openvino", "int8", {"io_dtype": "int8"}, "option io_dtype does not apply to openvino:int8; it applies to tflite:int8"),
    ("tflite", "int8", {"io_dtype": "int16"}, "io_dtype must be uint8 or int8"),
])
def test_bad_options_are_rejected_before_work(formats, quants, options, message):
    with pytest.raises(OptionError) as info:
        resolve(formats, quants, options)
    assert message in str(info.value)


def test_all_expands_to_the_registry():
    assert {s.key for s in resolve("all", "all")} == {f"{f}:{q}" for f, q in FORMATS}
    assert [s.key for s in resolve("all", "fp16")] == ["onnx:fp16", "openvino:fp16", "tflite:fp16"]


def test_unknown_target_lists_known(tmp_path):
    result = run_cli("export", tmp_path / "m.keras", "--target", "jetson")
    assert result.returncode == 2
    assert "unknown target 'jetson'" in result.stderr and "raspberrypi4" in result.stderr
