"""The command line: clear one-line errors for bad input, and the run goes on where it should."""
from __future__ import annotations

import json

from tests.conftest import run_cli


def test_unknown_export_format_lists_the_known_ones(tmp_path):
    result = run_cli("export", tmp_path / "model.keras", "--format", "tensorrt")
    assert result.returncode == 2
    assert "unknown format 'tensorrt'" in result.stderr and "onnx, openvino, tflite" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_missing_model(tmp_path):
    result = run_cli("export", tmp_path / "model.keras")
    assert result.returncode == 2 and "model file not found" in result.stderr


def test_predict_skips_bad_images_and_goes_on(coral, assets, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = assets / "images" / "imagenet-photos" / "parrot.jpg"
    result = run_cli("predict", coral / "mobilenet_v2_1.0_224_quant.tflite", bad, good, tmp_path / "gone.png",
                     "--labels", coral / "imagenet_labels.txt", "--json")
    assert result.returncode == 1  # some images failed
    assert f"{bad}: not a readable image" in result.stderr.replace("\n", "")
    assert "gone.png: no such file" in result.stderr.replace("\n", "")
    lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
    assert [x["top_k"][0][0] for x in lines] == ["macaw"]
    assert "Traceback" not in result.stderr


def test_predict_truncated_model(tmp_path, coral, assets):
    bad = tmp_path / "model.tflite"
    bad.write_bytes((coral / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()[:1000])
    result = run_cli("predict", bad, assets / "images/imagenet-photos/parrot.jpg", "--labels", coral / "imagenet_labels.txt")
    assert result.returncode == 2 and "truncated or corrupt" in result.stderr and str(bad) in result.stderr.replace("\n", "")


def test_train_single_class_dataset(tmp_path, flowers):
    import shutil

    (tmp_path / "ds" / "daisy").mkdir(parents=True)
    shutil.copy(next((flowers / "daisy").iterdir()), tmp_path / "ds" / "daisy" / "a.jpg")
    result = run_cli("train", tmp_path / "ds", "--backbone", "simple_cnn", "--weights", "none")
    assert result.returncode == 2 and "only one class" in result.stderr


def test_unknown_backbone(tmp_path, flowers):
    result = run_cli("train", flowers, "--backbone", "vgg99", "--out", tmp_path)
    assert result.returncode == 2 and "unknown backbone 'vgg99'" in result.stderr and "mobilenet_v2" in result.stderr


def test_formats_and_backbones_listed():
    assert "edgetpu" in run_cli("formats").stdout
    listed = run_cli("backbones").stdout
    for name in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet50", "efficientnet_b0", "simple_cnn"):
        assert name in listed
