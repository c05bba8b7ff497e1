"""The training pipeline on real flowers photos with a tiny model (simple_cnn at 32 px, seconds):
augmentation stays out of the saved model, determinism, resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT

TINY = dict(backbone="simple_cnn", weights="none", input_size=(32, 32), epochs=3, fine_tune_epochs=0,
            batch_size=8, seed=0, deterministic=True)


@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """One image cache folder for this module's runs (and its subprocesses)."""
    folder = tmp_path_factory.mktemp("edgecls_cache")
    old = os.environ.get("EDGECLS_CACHE")
    os.environ["EDGECLS_CACHE"] = str(folder)
    yield folder
    if old is None:
        os.environ.pop("EDGECLS_CACHE", None)
    else:
        os.environ["EDGECLS_CACHE"] = old


@pytest.fixture(scope="module")
def baseline(flowers, tmp_path_factory, cache_env):
    """An uninterrupted deterministic run with augmentation (flip/contrast in the model, warps on the host)."""
    from edgecls.train import TrainConfig, train

    return train(flowers, tmp_path_factory.mktemp("baseline"), TrainConfig(**TINY))


def _layer_structure(model_path: Path) -> list:
    import keras

    model = keras.saving.load_model(model_path, compile=False, safe_mode=True)

    def unnamed(value):  # layer names differ between models built in one process (conv2d, conv2d_1)
        if isinstance(value, dict):
            return {k: unnamed(v) for k, v in value.items() if k not in ("name", "seed")}
        if isinstance(value, (list, tuple)):
            return [unnamed(v) for v in value if not isinstance(v, str) or not v.startswith(("conv2d", "dense"))]
        return value

    def walk(m):
        out = []
        for layer in m.layers:
            out.append((type(layer).__name__, json.dumps(unnamed(layer.get_config()), sort_keys=True, default=str)))
            if hasattr(layer, "layers"):
                out.extend(walk(layer))
        return out

    return walk(model)


def test_saved_model_is_the_same_with_and_without_augmentation_or_bf16(flowers, baseline, tmp_path):
    """The saved model is the float32 inference model alone, whatever trained it."""
    from edgecls.train import TrainConfig, train

    plain = train(flowers, tmp_path, TrainConfig(**{**TINY, "epochs": 1, "augment": False, "precision": "bf16"}))
    assert json.loads((tmp_path / "model.keras.json").read_text())["source"]["training"]["precision"] == \
        {"phase 1": "mixed_bfloat16"}
    augmented, unaugmented = _layer_structure(baseline.model_path), _layer_structure(plain.model_path)
    assert augmented == unaugmented
    kinds = {kind for kind, _ in augmented}
    assert not any(k.startswith("Random") or k in ("InModelAugment", "Normalize", "ToFloat") for k in kinds), kinds
    manifest = json.loads((baseline.out_dir / "model.keras.json").read_text())
    assert manifest["input"]["dtype"] == "float32"
    assert manifest["source"]["training"]["precision"] == {"phase 1": "float32"}  # auto on a CPU


_BATCH_ORDER = """
import json
import numpy as np
import keras
from edgecls.train import feeder

pictures = np.repeat(np.arange(40, dtype=np.uint8), 12).reshape(40, 2, 2, 3)  # picture k is all k
feed = feeder(pictures, np.zeros(40, np.int64), np.arange(40), 4, shuffle=True, seed=3, workers=4)
seen = []

class Record(keras.layers.Layer):
    def call(self, x):
        try:
            seen.append(sorted(np.asarray(x)[:, 0, 0, 0].tolist()))
        except Exception:  # the symbolic pass that builds the model
            pass
        return keras.ops.cast(x, "float32")

inputs = keras.Input((2, 2, 3), dtype="uint8")
model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(Record()(inputs))))
model.compile("sgd", "mse", run_eagerly=True)
model.fit(feed, epochs=1, shuffle=False, verbose=0)
order = feed.plan.order(0)
print(json.dumps({"seen": seen, "expected": [sorted(order[i : i + 4].tolist()) for i in range(0, 40, 4)]}))
"""


def test_fit_trains_on_every_batch_once_in_order():
    """The feeder reads ahead itself: Keras' threaded reader (a PyDataset with workers) replayed
    its read-ahead after the batch fit takes to build the model, so on JAX the first epoch of a
    fit trained on some batches twice and never on others (2 threads, 20 batches: 2-6, 0-14)."""
    pytest.importorskip("jax", reason="CPU JAX comes with the dev extra: pip install -e '.[dev]'")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", _BATCH_ORDER], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout.strip().splitlines()[-1])
    assert record["seen"] == record["expected"]


def test_in_model_augmentation_acts_only_in_training():
    import keras

    from edgecls.augment import keras_layers

    layer = keras_layers()["InModelAugment"](flip=True, contrast=0.3, brightness=0.1, seed=1)
    x = np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype("float32")
    assert np.array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    out = keras.ops.convert_to_numpy(layer(x, training=True))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    assert np.mean(np.abs(out - x)) > 1.0  # changed: flips, brightness and contrast applied


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_in_model_augmentation_trains_under_mixed_precision(policy):
    """--precision fp16/bf16 with augmentation: the layer once mixed float16 pixels with float32 noise."""
    import keras

    from edgecls.augment import keras_layers

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = keras_layers()["InModelAugment"](flip=True, contrast=0.3, brightness=0.1, seed=1)
        x = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3)).astype("float32")
        out = keras.ops.convert_to_numpy(layer(x, training=True))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 255
    assert np.mean(np.abs(out - x)) > 1.0


def test_deterministic_runs_reproduce(flowers, baseline, tmp_path):
    from edgecls.train import TrainConfig, train

    again = train(flowers, tmp_path, TrainConfig(**TINY))
    assert again.history["loss"] == baseline.history["loss"]
    manifest = json.loads((again.out_dir / "model.keras.json").read_text())
    assert manifest["source"]["training"]["deterministic"] is True


_KILLABLE = """
import sys
from edgecls.train import TrainConfig, train
if __name__ == "__main__":
    train(sys.argv[1], sys.argv[2], TrainConfig(**{config}))
"""


def test_resume_after_sigkill_matches_an_uninterrupted_run(flowers, baseline, tmp_path, cache_env):
    from edgecls.train import resume

    out = tmp_path / "run"
    script = tmp_path / "killable.py"
    script.write_text(_KILLABLE.format(config=repr(TINY)))
    proc = subprocess.Popen([sys.executable, str(script), str(flowers), str(out)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "checkpoint" / "state.npz"
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    # The first epoch's checkpoint just appeared: the run is in its second epoch of three.
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), "the run ended before its first checkpoint"
    assert not (out / "model.keras.json").exists() and not (out / "model.keras").exists()

    resumed = resume(out)
    assert len(resumed.history["loss"]) == len(baseline.history["loss"]) == 3
    # Same data order, augmentation, optimizer state and random state: the same numbers.
    np.testing.assert_allclose(resumed.history["loss"], baseline.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(resumed.history["val_loss"], baseline.history["val_loss"], rtol=1e-5)
    manifest = json.loads((out / "model.keras.json").read_text())
    assert manifest["source"]["training"]["resumed"] is True
    assert not (out / "checkpoint").exists()  # a finished run leaves no checkpoint to resume


def test_resume_without_a_checkpoint_is_a_clear_error(baseline):
    from edgecls.errors import EdgeclsError
    from edgecls.train import resume

    with pytest.raises(EdgeclsError, match="no checkpoint to resume .that run finished."):
        resume(baseline.out_dir)


def test_options_are_validated_before_work(flowers, tmp_path):
    from edgecls.errors import OptionError
    from edgecls.train import TrainConfig, train

    with pytest.raises(OptionError, match="precision 'fp8': expected one of"):
        train(flowers, tmp_path, TrainConfig(**{**TINY, "precision": "fp8"}))
    with pytest.raises(OptionError, match="needs the JAX backend"):
        train(flowers, tmp_path, TrainConfig(**{**TINY, "data_parallel": True}))
    with pytest.raises(OptionError, match="feature_crops must be 0"):
        train(flowers, tmp_path, TrainConfig(**{**TINY, "feature_crops": 1.0}))
    with pytest.raises(OptionError, match="head_c must be positive"):
        train(flowers, tmp_path, TrainConfig(**{**TINY, "head_c": 0.0}))


def test_cli_resume_of_a_folder_without_checkpoint(tmp_path):
    from tests.conftest import run_cli

    proc = run_cli("train", "--resume", tmp_path)
    assert proc.returncode != 0
    assert "no checkpoint to resume" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--precision", "fp8", tmp_path)
    assert proc.returncode != 0 and "--precision 'fp8'" in proc.stderr
    for command in ("train", "cv"):
        proc = run_cli(command, tmp_path, "--feature-crops", "0.3")
        assert proc.returncode != 0 and "--feature-crops must be 0 (no crops) or in [0.5, 1)" in proc.stderr, command


def _photos(flowers: Path, name: str, start: int, stop: int) -> list[Path]:
    return sorted(p for p in (flowers / name).iterdir() if p.suffix.lower() == ".jpg")[start:stop]


def _interrupted_run(data: Path, out: Path, monkeypatch) -> None:
    """A run stopped after its last epoch's checkpoint, before its outputs (as SIGKILL would)."""
    import edgecls.train.run as run_module
    from edgecls.train import TrainConfig, train

    def killed(*_args, **_kwargs):
        raise RuntimeError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(run_module, "write_outputs", killed)
        with pytest.raises(RuntimeError, match="killed"):
            train(data, out, TrainConfig(**{**TINY, "epochs": 1}))
    assert (out / "checkpoint" / "state.npz").exists() and not (out / "model.keras").exists()


def test_resume_refuses_a_dataset_changed_since_the_run_began(flowers, tmp_path, monkeypatch, cache_env):
    """Issue 16 item 3: photos added after a kill were split anew on --resume (new "validation"
    photos had been trained on) and a new class was a traceback. The checkpoint records the files
    and the split; a changed dataset is refused, --on-recorded-files continues on the recorded files."""
    import shutil

    from edgecls.errors import DatasetError
    from edgecls.train import resume
    from tests.conftest import run_cli

    data, out = tmp_path / "ds", tmp_path / "out"
    for name in ("daisy", "roses"):
        (data / name).mkdir(parents=True)
        for photo in _photos(flowers, name, 0, 10):
            shutil.copy(photo, data / name / photo.name)
    _interrupted_run(data, out, monkeypatch)
    recorded = json.loads((out / "checkpoint" / "data.json").read_text())
    recorded_split = {k: sorted(recorded["files"][i][0] for i in v) for k, v in recorded["split"].items()}

    for name in ("daisy", "roses", "tulips"):  # 4 more photos in each class, and a new class
        (data / name).mkdir(exist_ok=True)
        for photo in _photos(flowers, name, 10, 14):
            shutil.copy(photo, data / name / photo.name)
    with pytest.raises(DatasetError, match=r"changed since the run .* 1 new class\(es\) \(tulips\); 12 new file"):
        resume(out)
    assert not (out / "model.keras.json").exists()

    replaced = data / recorded["files"][0][0]  # another photo under its name, its times put back
    times = (replaced.stat().st_atime_ns, replaced.stat().st_mtime_ns)
    shutil.copy(_photos(flowers, "daisy", 20, 21)[0], replaced)
    os.utime(replaced, ns=times)
    with pytest.raises(DatasetError, match=r"1 file\(s\) replaced or modified \(daisy/"):
        resume(out)

    gone = data / recorded["files"][-1][0]
    gone.rename(tmp_path / "away.jpg")
    with pytest.raises(DatasetError, match=r"cannot continue on the recorded files: 1 of them are gone"):
        resume(out, on_recorded_files=True)
    (tmp_path / "away.jpg").rename(gone)

    # A resume that would ignore a dataset argument or options names them, before any work.
    proc = run_cli("train", tmp_path / "other", "--resume", out, "--epochs", "27", "--backbone", "efficientnet_b0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "it would ignore the dataset" in message and "--backbone" in message and "--epochs" in message, message

    result = resume(out, on_recorded_files=True)
    source = json.loads((out / "model.keras.json").read_text())["source"]
    assert result.labels == ["daisy", "roses"]  # the new class is not part of this run
    assert {k: sorted(v) for k, v in source["split"]["files"].items()} == recorded_split
    assert not (out / "checkpoint").exists()


def test_a_diverging_run_stops_with_an_error(flowers, mobilenet_weights, tmp_path, cache_env):
    """A loss that becomes NaN ends the run with an error instead of NaN in history.json and a
    model that answers NaN: backbone weights with one broken tensor, with the gradient head
    (Keras TerminateOnNaN, then an error) and the feature head (its features are checked)."""
    import shutil

    import h5py

    from edgecls.errors import EdgeclsError
    from edgecls.train import TrainConfig, train

    data = tmp_path / "ds"
    for name in ("daisy", "roses"):
        (data / name).mkdir(parents=True)
        for photo in _photos(flowers, name, 0, 8):
            shutil.copy(photo, data / name / photo.name)
    broken = tmp_path / "broken.weights.h5"
    shutil.copy(mobilenet_weights, broken)
    broken.chmod(0o644)
    with h5py.File(broken, "r+") as weights:
        gamma = weights["layers/batch_normalization/vars/0"]  # the first batch norm's scale
        gamma[0] = np.nan
    config = dict(backbone="mobilenet_v2", weights=str(broken), input_size=(96, 96), epochs=2, fine_tune_epochs=0,
                  batch_size=8, seed=0)
    for feature_head, message in ((False, r"phase 1 \(head\): training diverged: the loss became nan in epoch 1"),
                                  (True, r"phase 1 \(head\): the backbone's features are not finite numbers")):
        out = tmp_path / f"out-{feature_head}"
        with pytest.raises(EdgeclsError, match=message):
            train(data, out, TrainConfig(**config, feature_head=feature_head))
        assert not (out / "model.keras").exists() and not (out / "history.json").exists()


def test_feature_head_puts_the_logistic_regression_into_the_model(flowers, mobilenet_weights, tmp_path, cache_env):
    """Phase 1 from backbone features computed once: the saved Keras model must score exactly what
    the logistic regression scored on the same validation photos (its weights went in intact)."""
    from edgecls.train import TrainConfig, train

    import io

    from rich.console import Console

    config = TrainConfig(weights=str(mobilenet_weights), input_size=(96, 96), epochs=1, fine_tune_epochs=0,
                         feature_head=True, seed=0)
    console = Console(file=io.StringIO(), width=400)
    result = train(flowers, tmp_path, config, console=console)
    # 160 training photos in two views each (as is and mirrored; corner crops are opt-in).
    assert "logistic regression on 320 feature vectors" in console.file.getvalue()
    assert len(result.history["loss"]) == 1
    assert result.metrics["val"]["accuracy"] == pytest.approx(result.history["val_accuracy"][0], abs=1e-9)
    assert result.metrics["val"]["accuracy"] >= 0.6  # chance is 0.2; MobileNetV2 features at 96 px reach ~0.8


def test_feature_views_are_the_picture_its_mirror_and_corner_crops():
    import cv2

    from edgecls.augment import corner_crop, feature_views

    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, 50, 40, 3), dtype=np.uint8)
    views = feature_views(mirror=True, crop=0.8)
    assert list(views)[:2] == ["as is", "mirrored"] and len(views) == 6 and views["as is"] is None
    assert np.array_equal(views["mirrored"](batch), batch[:, :, ::-1])
    bottom_right = corner_crop(batch, 0.8, (1, 1))
    assert bottom_right.shape == batch.shape
    assert np.array_equal(bottom_right[1], cv2.resize(batch[1, 10:, 8:], (40, 50), interpolation=cv2.INTER_LINEAR))
    assert len(feature_views(mirror=False, crop=0.0)) == 1 and len(feature_views(mirror=False, crop=0.7)) == 5


def test_label_smoothing_loss_and_optimizer_settings():
    """The smoothed loss is cross-entropy against (1 - e) one-hot + e / classes; weight decay
    picks AdamW, the cosine schedule warms up for one epoch then decays."""
    import keras

    from edgecls.train import TrainConfig, loss, optimizer

    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 2])
    eps = 0.1
    target = (1 - eps) * np.eye(3)[labels] + eps / 3
    expected = -(target * np.log(probs)).sum(1)
    got = keras.ops.convert_to_numpy(loss(eps)(labels, probs))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    plain = keras.ops.convert_to_numpy(loss(0.0)(labels, probs))
    assert abs(float(plain) - float(-np.log(probs[[0, 1], labels]).mean())) < 1e-5

    assert type(optimizer(TrainConfig(), 1e-3, 100, 10)).__name__ == "Adam"
    adamw = optimizer(TrainConfig(weight_decay=1e-4, lr_schedule="cosine"), 1e-3, 100, 10)
    assert type(adamw).__name__ == "AdamW" and adamw.weight_decay == pytest.approx(1e-4)
    schedule = adamw._learning_rate
    rates = [float(keras.ops.convert_to_numpy(schedule(step))) for step in (0, 10, 55, 99)]
    assert rates[0] == pytest.approx(1e-4) and rates[1] == pytest.approx(1e-3, rel=1e-3)
    assert rates[1] > rates[2] > rates[3] >= 0.0


def test_gradient_options_train_and_are_recorded(flowers, tmp_path):
    from edgecls.errors import OptionError
    from edgecls.train import TrainConfig, train

    config = TrainConfig(**{**TINY, "epochs": 2, "label_smoothing": 0.1, "weight_decay": 1e-4, "lr_schedule": "cosine"})
    result = train(flowers, tmp_path, config)
    assert len(result.history["loss"]) == 2 and np.isfinite(result.history["loss"]).all()
    recorded = json.loads((tmp_path / "model.keras.json").read_text())["source"]["config"]
    assert (recorded["label_smoothing"], recorded["weight_decay"], recorded["lr_schedule"]) == (0.1, 1e-4, "cosine")
    for bad, message in (({"label_smoothing": 1.0}, "label_smoothing must be"), ({"weight_decay": -1.0}, "weight_decay"),
                         ({"lr_schedule": "step"}, "lr_schedule 'step': expected one of")):
        with pytest.raises(OptionError, match=message):
            train(flowers, tmp_path / "bad", TrainConfig(**{**TINY, **bad}))
