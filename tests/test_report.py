"""Report writers, comparison, targets."""
from __future__ import annotations

import json

import pytest

from edgecls.errors import EdgeclsError, ModelError, OptionError
from edgecls.report import compare, html_page, load_report, markdown, pareto_front, write_all
from edgecls.targets import get_target, targets
from tests.conftest import run_cli


def _result(name, p50, acc=None, size=1_000_000):
    return {"artifact": f"/x/{name}", "name": name, "format": "tflite", "quantization": "int8", "engine": "litert",
            "engine_version": "ai-edge-litert 2.1.0", "threads": 2, "batch": 1, "runs": 50, "warmup_runs": 10,
            "init_ms": 5.0, "first_inference_ms": 3.0,
            "latency_ms": {"min": p50 * 0.9, "p50": p50, "p90": p50 * 1.1, "p99": p50 * 1.3, "mean": p50, "std": 0.1, "max": p50 * 2},
            "throughput_ips": 1000 / p50, "size_bytes": size, "peak_rss_mb": 80.0, "accuracy": acc,
            "top1_agreement": None, "samples_ms": [p50 * 0.95, p50, p50 * 1.05]}


def _report(results, target=None):
    return {"schema": "edgecls.bench/1", "options": {}, "target": target, "results": results,
            "host": {"cpu": "Test CPU", "cores": 2, "machine": "x86_64", "os": "Linux", "python": "3.11",
                     "edgecls": "0.1.0", "date": "2026-11-26T00:00:00+00:00"}}


def test_html_escapes_names_and_is_self_contained(tmp_path):
    evil = '<script>alert("x")</script>.tflite'
    page = html_page(_report([_result(evil, 2.0, 0.9), _result("b.onnx", 3.0, 0.95)]))
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert page.count("data:image/png;base64,") == 3  # latency, trade-off, size; no external files
    paths = write_all(_report([_result("a.tflite", 2.0, 0.9)]), tmp_path)
    assert json.loads(paths["json"].read_text())["results"][0]["name"] == "a.tflite"
    assert "a.tflite" in paths["md"].read_text()


def test_target_report_never_presents_host_figures_as_device_figures():
    target = {"name": "coral-usb", "hardware": "Google Edge TPU", "references": [
        {"model": "MobileNetV2 1.0 224", "artifact": "tflite:edgetpu", "latency_ms": 2.6, "source": "Coral benchmarks"}]}
    md = markdown(_report([_result("m.tflite", 20.0)], target))
    assert "Measured on this host: Test CPU" in md
    assert "these figures are host measurements, not measurements on Google Edge TPU" in md
    assert "(not measured here)" in md and "| 2.6 | Coral benchmarks |" in md


def test_pareto_front():
    # (latency, accuracy): the slow-and-worse point is dominated
    assert pareto_front([(1.0, 0.80), (2.0, 0.90), (3.0, 0.85), (0.5, 0.70)]) == [0, 1, 3]


def test_compare_shows_ratios_and_flags_regressions(tmp_path):
    a = _report([_result("m.tflite", 10.0, 0.9), _result("old.onnx", 5.0)])
    b = _report([_result("m.tflite", 13.0, 0.9), _result("new.xml", 4.0)])
    text, regressions = compare(a, b)
    row = next(line for line in text.splitlines() if line.startswith("| m.tflite"))
    assert "1.30x ⚠" in row and "1.00x" in row
    assert any(r.startswith("m.tflite: p50 ms 10 -> 13") for r in regressions)
    assert "only in A" in text and "only in B" in text
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = run_cli("report", "compare", tmp_path / "a.json", tmp_path / "b.json", "--fail-on-regression")
    assert result.returncode == 1 and "1.30x" in result.stdout and "regressions" in result.stderr


def test_load_report_rejects_other_files(tmp_path):
    (tmp_path / "x.json").write_text('{"schema": "something-else"}')
    with pytest.raises(EdgeclsError, match="not an edgecls benchmark report"):
        load_report(tmp_path / "x.json")
    with pytest.raises(EdgeclsError, match="not found"):
        load_report(tmp_path / "missing.json")


def test_targets_profiles():
    names = set(targets())
    assert {"raspberrypi4", "raspberrypi5", "coral-usb", "laptop-cpu"} <= names
    coral = get_target("coral-usb")
    assert coral.export == {"format": "tflite", "quant": "edgetpu"} and coral.engine_options("litert")["delegate"] == "edgetpu"
    pi4 = get_target("raspberrypi4")
    assert {r["artifact"]: r["latency_ms"] for r in pi4.references if r["backbone"] == "mobilenet_v2"} == \
        {"tflite:fp32": 46.0, "tflite:int8": 17.0}
    assert all(r["source"] for t in targets().values() for r in t.references)
    with pytest.raises(OptionError, match="unknown target 'pi9'; known targets: coral-usb, laptop-cpu"):
        get_target("pi9")


def test_bench_cli_unknown_target_and_missing_artifact(tmp_path, coral):
    result = run_cli("bench", coral / "mobilenet_v2_1.0_224_quant.tflite", "--target", "pi9")
    assert result.returncode == 2 and "unknown target 'pi9'" in result.stderr
    result = run_cli("bench", tmp_path / "nope.tflite")
    assert result.returncode == 2 and "nope.tflite: artifact not found" in result.stderr.replace("\n", "")
    with pytest.raises(ModelError):
        from edgecls.bench import bench

        bench([tmp_path / "nope.tflite"])


def test_target_engine_options_follow_the_artifacts_engine(assets, coral):
    """Options per engine: an ONNX artifact under raspberrypi4 gets onnxruntime's options, not
    LiteRT's use_xnnpack (which onnxruntime refuses)."""
    from edgecls.runtime import Classifier
    from edgecls.targets import engine_options_for

    onnx = assets / "models/onnx/mobilenetv2-12-int8.onnx"
    options, _ = engine_options_for(onnx, "raspberrypi4")
    assert options == {"num_threads": 4}
    clf = Classifier.from_artifact(onnx, labels=coral / "imagenet_labels.txt", normalization="torch", **options)
    assert clf.engine.name == "onnxruntime"
    assert engine_options_for(coral / "mobilenet_v2_1.0_224_quant.tflite", "raspberrypi4", threads=2)[0] == \
        {"num_threads": 2, "use_xnnpack": True}
    with pytest.raises(OptionError, match="target coral-usb has no options for the onnxruntime engine"):
        engine_options_for(onnx, "coral-usb")
    # Every profile's tables name real engines and only options those engines take.
    from edgecls.engines import ENGINES

    for t in targets().values():
        assert t.engines and t.artifacts
        for engine, opts in t.engines.items():
            assert set(opts) <= set(ENGINES[engine].options), (t.name, engine)


def test_stream_and_bench_under_a_target_use_the_same_engine_options(assets, coral, tmp_path):
    onnx = assets / "models/onnx/mobilenetv2-12-int8.onnx"
    result = run_cli("stream", onnx, assets / "images" / "imagenet-photos", "--target", "raspberrypi4",
                     "--labels", coral / "imagenet_labels.txt", "--normalization", "torch", "--max-frames", "2",
                     "--stats-interval", "0")
    assert result.returncode == 0, result.stderr
    assert "use_xnnpack" not in result.stderr
    from edgecls.bench import bench

    report = bench([onnx], target="raspberrypi4", min_runs=2, min_seconds=0.0, warmup=1, warmup_seconds=0.0)
    assert report["results"][0]["engine_options"] == {"num_threads": 4}
    assert report["target"]["engines"]["onnxruntime"] == {"num_threads": 4}


def test_bench_under_coral_target_never_silently_drops_the_edgetpu_delegate(coral, tmp_path):
    """Without the Edge TPU runtime the delegate cannot load: an error naming it, not a CPU run
    reported as the target's."""
    result = run_cli("bench", coral / "mobilenet_v2_1.0_224_quant.tflite", "--target", "coral-usb", "--runs", "2",
                     "--min-time", "0", "--warmup", "1", "--warmup-time", "0", "--out", tmp_path)
    assert result.returncode == 2, result.stdout
    assert "libedgetpu" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bench.json").exists()
