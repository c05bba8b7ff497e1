"""Every (format, mode) of the registry for the flowers MobileNetV2 at 224 (a model whose own
accuracy is meaningful, so int8 flips are signal), the gate, the int8 scheme, bad options.

Numeric bounds hold on AVX-512 VNNI and on AVX2-only hosts: the default ("portable") int8
scheme uses only integer paths that cannot saturate on either (7-bit weights for onnxruntime and
NNCF, XNNPACK's 32-bit accumulation for LiteRT), so int8 answers do not depend on the host's
ISA; `test_int8_answers_do_not_depend_on_vnni` checks that under an emulated AVX2 CPU.
"""
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

LABELS = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]


@pytest.mark.parametrize("key", sorted(f"{f}:{q}" for f, q in FORMATS))
def test_every_format_and_mode_exports_and_runs(flowers_exports, key, assets):
    report = flowers_exports[key]
    assert report.passed, report.error
    path = Path(report.path)
    assert path.exists() and Path(str(path) + ".json").exists()
    # 120 images: 40 validation + 80 training images calibration did not see.
    assert report.notes["count"] == 120 and report.notes["val_count"] == 40
    lo, hi = report.notes["agreement_ci95"]
    assert lo <= report.top1_agreement <= hi
    if key.endswith(("fp32", "fp16")):
        # Float artifacts compute what Keras computes up to rounding: no answer may change.
        assert report.top1_agreement == 1.0 and report.max_prob_diff < 0.02, (key, report.max_prob_diff)
    else:
        # Measured 0.967-0.983 (4 to 2 flips of 120) for every int8 artifact, identical on VNNI
        # and emulated AVX2. A conversion that breaks (wrong scale, saturation, lost layer) flips
        # far more than the 12 images this bound allows; the accuracy bound is the same idea.
        assert report.top1_agreement >= 0.9, (key, report.top1_agreement)
        assert report.accuracy_drop_pp <= 5.0, (key, report.accuracy_drop_pp)
    clf = Classifier.from_artifact(path)
    manifest = clf.manifest
    assert manifest.quantization == key.split(":")[1] and manifest.preprocessing.size == (224, 224)
    assert manifest.verification["cpu"]["features"] == report_cpu_features()
    daisy = sorted((assets / "data/flowers-small/daisy").iterdir())[0]
    assert clf.predict(daisy, 1)[0][0] in LABELS


def report_cpu_features() -> list[str]:
    from edgecls.cpu import cpu_info

    return cpu_info()["features"]


def test_int8_scheme_is_recorded(flowers_exports):
    onnx = Classifier.from_artifact(flowers_exports["onnx:int8"].path).manifest.source["quantization_scheme"]
    assert onnx == {"int8_cpu": "portable", "format": "QDQ", "activations": "uint8", "weights": "int8",
                    "per_channel": True, "reduce_range": True, "calibration": "minmax"}
    ov = Classifier.from_artifact(flowers_exports["openvino:int8"].path).manifest.source["quantization_scheme"]
    assert ov["overflow_fix"] == "enable" and ov["int8_cpu"] == "portable"
    tfl = Classifier.from_artifact(flowers_exports["tflite:int8"].path).manifest.source["quantization_scheme"]
    assert tfl["io"] == "uint8"
    assert "quantization_scheme" not in Classifier.from_artifact(flowers_exports["onnx:fp32"].path).manifest.source


def test_quantized_inputs_and_sizes(flowers_exports):
    matrix = flowers_exports
    int8 = Classifier.from_artifact(matrix["tflite:int8"].path)
    assert int8.engine.input.dtype == np.uint8 and int8.engine.input.quantized
    tpu = Classifier.from_artifact(matrix["tflite:edgetpu"].path)
    assert tpu.engine.input.shape == (1, 224, 224, 3) and tpu.engine.input.dtype == np.uint8
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
def test_embedded_metadata_configures_runtime_without_sidecar(flowers_exports, key, tmp_path):
    src = Path(flowers_exports[key].path)
    for f in src.parent.glob(src.stem + ".*"):
        if f.is_file() and not f.name.endswith(".json"):  # not the manifest, nor the check images' folder
            shutil.copy(f, tmp_path / f.name)
    clf = Classifier.from_artifact(tmp_path / src.name)  # no .json beside it
    assert clf.labels == LABELS
    assert clf.preprocessing == Classifier.from_artifact(src).preprocessing


def test_int8_io_dtype_and_arm_target(flowers_model, tmp_path):
    from edgecls.export.pipeline import export_model

    (tfl, onnx) = export_model(flowers_model.model_path, "tflite,onnx", "int8", out_dir=tmp_path, io_dtype="int8",
                               max_accuracy_drop=100.0, calibration_count=50, target="raspberrypi4")
    clf = Classifier.from_artifact(tfl.path)
    assert clf.engine.input.dtype == np.int8 and clf.engine.output.dtype == np.int8
    scheme = Classifier.from_artifact(onnx.path).manifest.source["quantization_scheme"]
    assert scheme["activations"] == "int8" and scheme["reduce_range"] is False and scheme["int8_cpu"] == "arm"
    # S8S8 on x86 runs through onnxruntime's exact (non-saturating) path; same bound as above.
    assert tfl.top1_agreement >= 0.9 and onnx.top1_agreement >= 0.9
    # 50 calibration images leave 110 training images for verification.
    assert tfl.notes["count"] == 40 + 110
    summary = json.loads((tmp_path / "export_summary.json").read_text())
    assert summary["int8_cpu"] == "arm" and summary["target"] == "raspberrypi4"
    assert any("the target device is arm" in n for n in summary["notes"])


def test_gate_rejects_and_removes_an_earlier_artifact(flowers_model, flowers_exports, tmp_path):
    from edgecls.export.pipeline import export_model

    calib = tmp_path / "black"
    calib.mkdir()
    for i in range(8):
        cv2.imwrite(str(calib / f"{i}.png"), np.zeros((96, 96, 3), np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    good = Path(flowers_exports["tflite:int8"].path)
    for f in (good, Path(str(good) + ".json")):
        shutil.copy(f, out / f.name)  # an artifact from an earlier run, valid on its own
    (report,) = export_model(flowers_model.model_path, "tflite", "int8", out_dir=out, calibration=calib,
                             max_accuracy_drop=1.0)
    assert not report.passed
    assert "accuracy gate failed" in report.error and "more than the allowed 1.00 pp" in report.error
    assert "removed the earlier model_int8.tflite" in report.error
    assert not list(out.glob("*.tflite*")) and not list(out.glob(".staging*"))  # nothing deployable left
    summary = json.loads((out / "export_summary.json").read_text())
    assert summary["artifacts"][0]["passed"] is False and summary["artifacts"][0]["accuracy_drop_pp"] > 1.0
    assert summary["host_cpu"]["features"] == report_cpu_features()


def test_gate_judges_drop_and_agreement():
    from edgecls.export.pipeline import Gate

    stats = {"accuracy": 0.95, "reference_accuracy": 0.96, "accuracy_drop_pp": 1.0, "count": 120,
             "top1_agreement": 0.975}
    assert Gate(1.0).failure(stats) is None
    assert "drop of 1.00 pp" in Gate(0.5).failure(stats)
    assert "below the required 0.9800" in Gate(1.0, 0.98).failure(stats)
    with pytest.raises(OptionError, match="min_agreement"):
        from edgecls.export.pipeline import export_model

        export_model("missing.keras", "onnx", "fp32", min_agreement=1.5)


def test_notes_say_where_int8_was_checked():
    from edgecls.export.pipeline import _cpu_notes
    from edgecls.targets import get_target

    vnni = {"class": "x86-vnni"}
    laptop = get_target("laptop-cpu")
    risky = _cpu_notes(vnni, "x86-vnni", laptop)
    assert any("may lack VNNI" in n and "may answer differently" in n for n in risky)
    safe = _cpu_notes(vnni, "portable", laptop)
    assert any("may lack VNNI" in n and "compute the same there" in n for n in safe)
    assert _cpu_notes({"class": "x86-avx2"}, "portable", None) == []
    assert any("the target device is arm" in n for n in _cpu_notes({"class": "x86-avx2"}, "arm",
                                                                      get_target("raspberrypi5")))


@pytest.mark.parametrize("formats,quants,options,message", [
    ("tensorrt", "fp32", {}, "unknown format 'tensorrt'"),
    ("onnx", "dynamic", {}, "format onnx has no 'dynamic' mode; it has: fp32, fp16, int8"),
    ("tflite", "int4", {}, "unknown quantization 'int4'"),
    ("openvino", "int8", {"io_dtype": "int8"}, "option io_dtype does not apply to openvino:int8; it applies to tflite:int8"),
    ("tflite", "int8", {"io_dtype": "int16"}, "io_dtype 'int16': expected one of uint8, int8"),
    ("onnx", "int8", {"int8_cpu": "riscv"}, "int8_cpu 'riscv': expected one of portable, x86-vnni, x86-avx2, arm"),
    ("onnx", "fp32", {"int8_cpu": "arm"}, "option int8_cpu does not apply to onnx:fp32"),
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


def test_explain_export_draws_cam_on_the_device(flowers_model, flowers, tmp_path):
    from edgecls.export.pipeline import export_model

    (report,) = export_model(flowers_model.model_path, "tflite", "int8", out_dir=tmp_path, explain=True,
                             calibration_count=20, max_accuracy_drop=100.0)
    assert report.passed, report.error
    assert report.top1_agreement >= 0.9  # the second output must not disturb the first
    manifest = json.loads(Path(report.path + ".json").read_text())
    assert "model_int8.tflite.cam.npz" in manifest["companions"] and manifest["output"]["explain"] == "cam"
    daisy = sorted((flowers / "daisy").iterdir())[0]
    result = run_cli("predict", report.path, daisy, "--explain", "--explain-out", tmp_path / "cam")
    assert result.returncode == 0, result.stderr
    overlays = list((tmp_path / "cam").glob("*.png"))
    assert len(overlays) == 1 and overlays[0].stat().st_size > 1000
    with pytest.raises(OptionError, match="explain does not apply to openvino:int8"):
        resolve("openvino", "int8", {"explain": True})
