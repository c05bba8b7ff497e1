"""The README's main job, end to end on the embedded digits dataset (shortened training)."""
from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.slow  # the whole pipeline: six exports verified, evaluated and benchmarked
def test_quickstart_trains_exports_evaluates_benchmarks(tmp_path):
    result = run_cli("quickstart", "--out", tmp_path, "--epochs", "4", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "digits").rglob("*.png"))) == 1797
    report = (tmp_path / "report.md").read_text()
    for name in ("model.keras", "model_fp32.tflite", "model_int8.tflite", "model_fp32.onnx", "model_int8.onnx",
                 "model_fp32.xml", "model_int8.xml"):
        assert f"| {name} |" in report
    bench = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert len(bench["results"]) == 6 and all(r["latency_ms"]["p50"] > 0 for r in bench["results"])
    keras_eval = json.loads((tmp_path / "eval" / "model.keras" / "metrics.json").read_text())
    assert keras_eval["split"] == "test" and keras_eval["accuracy"] > 0.8  # chance is 0.1
    assert (tmp_path / "bench" / "bench.html").exists() and (tmp_path / "model" / "training_curves.png").exists()
    assert "wall time" in result.stdout
