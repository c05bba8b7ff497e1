"""Issue 15 part 2: the resize mode a model trains with (recipe default or --resize) is recorded
and used by export and predict; --refit-all fits on every photo and records a CV estimate.
Lean: MobileNetV2 at 64 px, one view per photo, one int8 export (about half a minute unloaded)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run_cli
from tests.test_train_pipeline import TINY


def test_photo_backbones_default_to_center_crop_and_simple_cnn_to_stretch():
    from edgecls.models import get_recipe, recipes

    # ImageNet weights were trained on aspect-preserving crops (bench/results/resize_mode_cv.md).
    for name, recipe in recipes().items():
        assert recipe.resize == ("stretch" if name == "simple_cnn" else "center_crop"), name
    assert get_recipe("mobilenet_v2").preprocessing((64, 64)).resize == "center_crop"
    assert get_recipe("mobilenet_v2").preprocessing((64, 64), "stretch").resize == "stretch"


def test_resize_and_refit_all_are_checked_before_work(flowers, mobilenet_weights, tmp_path):
    from edgecls.errors import OptionError
    from edgecls.train import TrainConfig

    weights = str(mobilenet_weights)
    with pytest.raises(OptionError, match="resize 'squash': expected one of stretch, center_crop"):
        TrainConfig(resize="squash").validate()
    with pytest.raises(OptionError, match="refit_all needs the feature head"):
        TrainConfig(weights=weights, refit_all=True, feature_head=False).validate()
    with pytest.raises(OptionError, match="refit_all cannot fine-tune"):
        TrainConfig(weights=weights, refit_all=True, fine_tune_epochs=2).validate()
    with pytest.raises(OptionError, match="refit_all needs a pretrained backbone"):
        TrainConfig(**{**TINY, "refit_all": True}).validate()
    for command in ("train", "cv"):
        proc = run_cli(command, flowers, "--resize", "squash", "--out", tmp_path / command)
        assert proc.returncode != 0 and "--resize 'squash': expected one of stretch, center_crop" in proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / command).exists(), command
    proc = run_cli("train", flowers, "--refit-all", "--gradient-head", "--weights", weights, "--out", tmp_path / "g")
    assert proc.returncode != 0 and "--refit-all needs the feature head" in proc.stderr, proc.stderr


def test_train_resize_overrides_the_recipe_and_is_recorded(flowers, tmp_path):
    from edgecls.manifest import load_manifest
    from edgecls.train import TrainConfig, train

    result = train(flowers, tmp_path, TrainConfig(**{**TINY, "epochs": 1, "resize": "center_crop"}))
    assert load_manifest(result.model_path).preprocessing.resize == "center_crop"  # simple_cnn's recipe: stretch


@pytest.fixture(scope="module")
def refit(flowers, mobilenet_weights, tmp_path_factory):
    """MobileNetV2 (64 px, the recipe's center_crop) refitted on all 200 photos, exported fp32 and int8."""
    import io

    from rich.console import Console

    from edgecls.export.pipeline import export_model
    from edgecls.train import TrainConfig, train

    out = tmp_path_factory.mktemp("refit")
    console = Console(file=io.StringIO(), width=400)
    # head_c given: no inner CV of C (the estimate's folds still refit the head; seconds saved).
    config = TrainConfig(weights=str(mobilenet_weights), input_size=(64, 64), augment=False, refit_all=True,
                         cv_folds=3, head_c=1.0, seed=0)
    result = train(flowers, out, config, console=console)
    reports = export_model(result.model_path, "tflite", "fp32,int8", out_dir=out / "export", calibration_count=32)
    return result, console.file.getvalue(), reports


def test_refit_all_trains_on_every_photo_and_records_the_cv_estimate(refit):
    from edgecls.manifest import load_manifest

    result, log, _ = refit
    manifest = load_manifest(result.model_path)
    files = manifest.source["split"]["files"]
    assert len(files["train"]) == 200 and files["val"] == [] and files["test"] == []
    assert result.metrics["train"]["count"] == 200
    assert "no fine-tuning phase: --refit-all" in log and "3-fold CV estimate" in log
    estimate = result.metrics["cv_estimate"]
    assert estimate["count"] == 200 and sum(f["count"] for f in estimate["per_fold"]) == 200
    assert estimate["accuracy"] == pytest.approx(estimate["correct"] / 200)
    assert result.metrics["val"]["accuracy"] == pytest.approx(estimate["accuracy"])
    lo, hi = estimate["ci95"]
    assert lo < estimate["accuracy"] < hi
    assert estimate["accuracy"] >= 0.5  # chance is 0.2; MobileNetV2 features at 64 px score ~0.7 by CV
    recorded = manifest.verification
    assert recorded["cv_accuracy"] == pytest.approx(estimate["accuracy"]) and "val_accuracy" not in recorded
    assert "cross-validation" in recorded["accuracy_estimate"]
    assert "C=1, the refit's, given" in recorded["accuracy_estimate"]  # every fold reuses the refit's C
    assert json.loads((result.out_dir / "metrics.json").read_text())["cv_estimate"]["folds"] == 3


def test_refit_model_exports_and_predict_uses_the_recorded_resize(refit, flowers):
    from edgecls.manifest import load_manifest
    from edgecls.preprocess import read_rgb
    from edgecls.runtime import Classifier

    _, _, reports = refit
    for report in reports:  # int8 calibration and the gate work with no validation split
        assert report.passed and report.error is None, report
        assert load_manifest(report.path).preprocessing.resize == "center_crop"
    # fp32: its probabilities show a change of input that int8's 1/256 output steps may round away.
    artifact = next(r.path for r in reports if r.quant == "fp32")
    # The three least square photos: there a center crop and a stretch see different pixels.
    shapes = {p: read_rgb(p).shape[:2] for p in sorted(flowers.rglob("*.jpg"))}
    photos = sorted(shapes, key=lambda p: -max(shapes[p]) / min(shapes[p]))[:3]
    recorded, stretched = Classifier.from_artifact(artifact), Classifier.from_artifact(artifact, resize="stretch")
    assert recorded.preprocessing.resize == "center_crop"
    proc = run_cli("predict", artifact, *photos, "--json", "-k", "5")
    assert proc.returncode == 0, proc.stderr
    differs = False
    for photo, line in zip(photos, proc.stdout.splitlines()):
        printed = dict(json.loads(line)["top_k"])
        by_manifest, by_stretch = dict(recorded.predict(photo, 5)), dict(stretched.predict(photo, 5))
        assert all(printed[k] == pytest.approx(by_manifest[k], abs=1e-6) for k in by_manifest), photo
        assert not np.array_equal(recorded.prepare(read_rgb(photo)), stretched.prepare(read_rgb(photo)))
        differs |= any(abs(printed[k] - by_stretch.get(k, -1.0)) > 1e-4 for k in printed)
    assert differs  # the check above can tell the two resize modes apart
