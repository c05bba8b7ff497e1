"""Ensembles of small flowers models: one Keras model, exported to int8 TFLite through the gate."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def members(tmp_path_factory, flowers, mobilenet_weights):
    """Two quick MobileNetV2 heads on flowers-small at different input sizes (96 and 112 px)."""
    from edgecls.train import TrainConfig, train

    out = []
    for size, seed in ((96, 0), (112, 1)):
        config = TrainConfig(weights=str(mobilenet_weights), input_size=(size, size), epochs=5, fine_tune_epochs=0,
                             batch_size=16, learning_rate=5e-3, seed=seed, augment=False)
        out.append(train(flowers, tmp_path_factory.mktemp(f"member{size}"), config).model_path)
    return out


@pytest.fixture(scope="module")
def ensemble_cli(members, tmp_path_factory):
    """`edgecls ensemble` run once through the real command line."""
    out = tmp_path_factory.mktemp("ensemble")
    proc = run_cli("ensemble", *members, "--out", out)
    return proc, out


def test_affine_maps_one_normalisation_onto_another():
    from edgecls.ensemble import _affine
    from edgecls.preprocess import Preprocessing

    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.float32)
    for src, dst in (("raw", "caffe"), ("tf", "torch"), ("raw", "tf"), ("torch", "caffe")):
        s, d = Preprocessing.named(src, (5, 4)), Preprocessing.named(dst, (5, 4))
        kernel, bias = _affine(s, d)
        np.testing.assert_allclose(s.normalize(pixels) @ kernel + bias, d.normalize(pixels), atol=1e-3)
    assert _affine(Preprocessing.named("tf", (5, 4)), Preprocessing.named("tf", (9, 9))) is None


def test_ensemble_cli_reports_members(ensemble_cli):
    proc, out = ensemble_cli
    assert proc.returncode == 0, proc.stderr
    assert "member_1" in proc.stdout and "ensemble vs best member" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    print(f"ensemble accuracy {m['ensemble']['accuracy']:.3f}, members "
          f"{m['member_0']['accuracy']:.3f} / {m['member_1']['accuracy']:.3f} on {m['count']} validation photos")
    assert m["count"] == 40 and m["ensemble"]["accuracy"] >= 0.7
    # Averaging probabilities is never far below the weaker member; 2 photos of 40 allow for
    # host-to-host float differences (AVX2 vs AVX-512 only flip near-tied predictions).
    assert m["ensemble"]["accuracy"] >= min(m["member_0"]["accuracy"], m["member_1"]["accuracy"]) - 0.05


def test_ensemble_exports_to_int8_through_the_gate(ensemble_cli, flowers):
    from edgecls import data as data_mod
    from edgecls.export.pipeline import export_model
    from edgecls.manifest import load_manifest
    from edgecls.runtime import Classifier

    _, out = ensemble_cli
    model_path = out / "model.keras"
    manifest = load_manifest(model_path)
    assert manifest.preprocessing.size == (112, 112)
    reports = export_model(model_path, "tflite", "int8", out / "export", calibration_count=40, max_accuracy_drop=5.0)
    assert reports[0].passed, reports[0].error
    clf = Classifier.from_artifact(reports[0].path)
    assert clf.labels == manifest.labels and clf.engine.input.shape[1:3] == (112, 112)
    folder = data_mod.scan(flowers)
    val = data_mod.load_images(folder, data_mod.recorded_split(folder, manifest.source["split"])["val"], clf.preprocessing)
    int8_accuracy = float(np.mean(clf.scores(val.images).argmax(1) == val.targets))
    keras_accuracy = manifest.verification["val_accuracy"]
    print(f"int8 TFLite ensemble accuracy {int8_accuracy:.3f} (Keras {keras_accuracy:.3f})")
    # int8 rounding flips at most a couple of near-tied photos out of 40 (either host, AVX2 or VNNI).
    assert abs(int8_accuracy - keras_accuracy) <= 0.05


def test_ensemble_errors(members, tmp_path):
    from typer.testing import CliRunner

    from edgecls.cli import app

    one = CliRunner().invoke(app, ["ensemble", str(members[0]), "--out", str(tmp_path / "one")])
    assert one.exit_code == 2 and "at least two" in one.output
    (tmp_path / "bad.keras").write_bytes(b"not a model")
    bad = CliRunner().invoke(app, ["ensemble", str(members[0]), str(tmp_path / "bad.keras"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "bad.keras" in bad.output and isinstance(bad.exception, SystemExit)
