"""Training with KERAS_BACKEND=jax (the GPU backend) on CPU, data parallel over two virtual XLA
devices, then exporting the result through the TensorFlow backend (what `edgecls export` uses)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytest.importorskip("jax", reason="CPU JAX comes with the dev extra: pip install -e '.[dev]'")

_TRAIN = """
import json, sys
import keras
from edgecls.train import TrainConfig, train
assert keras.backend.backend() == "jax", keras.backend.backend()
result = train(sys.argv[1], sys.argv[2], TrainConfig(**json.loads(sys.argv[3])))
print(json.dumps({"val": result.metrics["val"]["accuracy"], "epochs": len(result.history["loss"])}))
"""


def test_jax_data_parallel_training_exports_through_tensorflow(flowers, tmp_path):
    config = dict(backbone="simple_cnn", weights="none", input_size=[32, 32], epochs=2, fine_tune_epochs=0,
                  batch_size=16, data_parallel=True, seed=0)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "EDGECLS_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "jax_model"
    proc = subprocess.run([sys.executable, "-c", _TRAIN, str(flowers), str(out), json.dumps(config)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    manifest = json.loads((out / "model.keras.json").read_text())
    training = manifest["source"]["training"]
    assert training["backend"] == "jax" and training["devices"] == 2  # DataParallel over both devices

    import keras

    from edgecls.export.pipeline import export_model

    assert keras.backend.backend() == "tensorflow"
    reports = export_model(out / "model.keras", "tflite", "fp32", out_dir=tmp_path / "export", max_accuracy_drop=1.0)
    assert len(reports) == 1 and reports[0].passed, reports[0].error
    # The float32 TFLite model agrees with the Keras model run by TensorFlow ...
    assert reports[0].accuracy == pytest.approx(reports[0].reference_accuracy, abs=0.011)
    # ... and TensorFlow reproduces the validation accuracy JAX measured (at most one of 40 photos on
    # the edge of a decision may flip between the two backends' float kernels).
    from edgecls.workflows import evaluate_model

    tf_val = evaluate_model(out / "model.keras", flowers, split="val", out_dir=tmp_path / "eval")["accuracy"]
    assert tf_val == pytest.approx(summary["val"], abs=0.026)
