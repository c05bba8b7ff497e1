"""Benchmark arithmetic and a real measurement of a real model."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgecls.bench import bench, latency_stats, markdown_table, write_reports
from edgecls.errors import ModelError


def test_latency_stats_on_known_samples():
    s = latency_stats(list(range(1, 101)))  # 1..100 ms
    assert s["min"] == 1 and s["max"] == 100
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5)
    assert s["std"] == pytest.approx(np.std(np.arange(1, 101)))
    with pytest.raises(ValueError):
        latency_stats([])


def test_bench_real_model_writes_json_and_markdown(coral, tmp_path):
    # The Coral model has no manifest: copy it with one so the runtime can open it unaided.
    from edgecls.manifest import Manifest
    from edgecls.preprocess import Preprocessing

    model = tmp_path / "mobilenet_v2_quant.tflite"
    model.write_bytes((coral / "mobilenet_v2_1.0_224_quant.tflite").read_bytes())
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    Manifest("tflite", "uint8", labels, Preprocessing.named("tf", (224, 224))).save(model)
    report = bench([model], threads=2, min_runs=5, min_seconds=0.2, warmup=2)
    r = report["results"][0]
    assert r["runs"] >= 5 and r["engine"] == "litert" and r["threads"] == 2
    assert 0 < r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert r["size_bytes"] == model.stat().st_size
    assert 20 < r["peak_rss_mb"] < 1000  # measured in its own worker process
    json_path, md_path = write_reports(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["results"][0]["name"] == model.name
    assert model.name in md_path.read_text() and "p50" in markdown_table(report)
    assert report["host"]["cores"] >= 1


def test_bench_missing_artifact(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        bench([tmp_path / "none.tflite"])


def test_rounds_pool_samples(coral):
    report = bench([coral / "mobilenet_v1_0.25_128_quant.tflite"], threads=1, min_runs=5, min_seconds=0.1, warmup=1,
                   warmup_seconds=0.0, rounds=2)
    r = report["results"][0]
    assert r["rounds"] == 2 and r["runs"] >= 10 and len(r["samples_ms"]) == r["runs"]
    assert report["options"]["rounds"] == 2


def test_display_names_tell_same_named_artifacts_apart(tmp_path):
    from edgecls.bench import display_names

    a, b, c = tmp_path / "default/export/model_int8.tflite", tmp_path / "ensemble/export/model_int8.tflite", \
        tmp_path / "other.onnx"
    assert display_names([a, c]) == ["model_int8.tflite", "other.onnx"]
    assert display_names([a, b, c]) == ["default/export/model_int8.tflite", "ensemble/export/model_int8.tflite",
                                        "other.onnx"]
