"""Benchmark reports carry the device's provenance, and `report compare` puts a device's run beside
the workstation's and the target profile's published references, flagging a throttled run."""
from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def workstation_report(tmp_path_factory, coral):
    """A real `edgecls bench --target raspberrypi4` run on this host, of an int8 MobileNetV2 with a manifest."""
    from edgecls.deploy.artifacts import stage

    folder = tmp_path_factory.mktemp("art")
    stage(coral / "mobilenet_v2_1.0_224_quant.tflite", folder, coral / "imagenet_labels.txt")
    artifact = folder / "mobilenet_v2_1.0_224_quant.tflite"
    out = tmp_path_factory.mktemp("bench")
    result = run_cli("bench", artifact, "--target", "raspberrypi4", "--runs", "5", "--min-time", "0", "--warmup", "1",
                     "--warmup-time", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    return out / "bench.json"


def test_bench_records_device_provenance(workstation_report):
    doc = json.loads(workstation_report.read_text())
    device = doc["device"]
    assert {"model", "cpu_class", "engines", "thermal_before", "thermal_after", "throttled"} <= set(device)
    assert device["engines"]["litert"].startswith("ai-edge-litert")
    assert device["throttled"] is None  # this host has no firmware flags, so nothing says it throttled
    assert doc["target"]["device"]["board"] == "Raspberry Pi 4"
    assert "Device:" in (workstation_report.parent / "bench.md").read_text()


def pi_run(report: dict, p50_ms: float, throttled: bool) -> dict:
    """The same report as a Raspberry Pi 4 would write it: its board, Arm CPU, thermal states and timing.
    (No Pi here: only the fields a Pi fills differently are replaced.)"""
    from edgecls.provenance import decode_throttled, throttled_during

    pi = copy.deepcopy(report)
    pi["host"].update(cpu="Cortex-A72", cpu_class="arm", cores=4, machine="aarch64")
    before = {"temperature_c": 48.0, "throttled": decode_throttled(0), "cpu_mhz": {"current": 1800.0, "max": 1800.0}}
    after = {"temperature_c": 82.5, "throttled": decode_throttled(0xE0008 if throttled else 0),
             "cpu_mhz": {"current": 1000.0 if throttled else 1800.0, "max": 1800.0}}
    pi["device"].update(model="Raspberry Pi 4 Model B Rev 1.4", cpu_class="arm", thermal_before=before,
                        thermal_after=after, throttled=throttled_during(before, after))
    for result in pi["results"]:
        result["latency_ms"] = {**result["latency_ms"], "p50": p50_ms}
    return pi


def test_compare_puts_device_beside_workstation_and_reference(workstation_report, tmp_path):
    from edgecls.report import compare

    host = json.loads(workstation_report.read_text())
    pi = pi_run(host, 34.0, throttled=True)
    text, _ = compare(host, pi)
    assert "## Where each run was measured" in text
    assert "| board | not reported | Raspberry Pi 4 Model B Rev 1.4 |" in text
    assert "48.0 → 82.5 °C" in text and "1800/1800 MHz → 1000/1800 MHz" in text
    assert "⚠ Run B throttled (soft temperature limit before the run" not in text
    assert "⚠ Run B throttled (soft temperature limit after the run; arm frequency capped, throttled, soft " \
           "temperature limit began during the run)" in text
    row = next(line for line in text.splitlines() if line.startswith("| mobilenet_v2") and "reference" not in line
               and "tflite:int8" in line)
    assert "tflite:int8" in row and "34.0 (2.00x)" in row and "MobileNetV2 1.0 224 17.0 ms" in row
    assert "XNNPACK README" in row
    # A run that did not throttle is not flagged.
    calm, _ = compare(host, pi_run(host, 20.0, throttled=False))
    assert "⚠ Run B" not in calm and "| throttling | no firmware flags on this machine | none reported |" in calm


def test_report_on_the_target_board_says_so(workstation_report):
    from edgecls.report import provenance

    host = json.loads(workstation_report.read_text())
    assert "not measurements on 4x Arm Cortex-A72" in provenance(host)
    on_pi = provenance(pi_run(host, 20.0, throttled=False))
    assert "this is that device" in on_pi and "not measurements on" not in on_pi


def test_compare_cli_with_an_older_report(workstation_report, tmp_path):
    """A report from before device provenance still compares; the device column says so."""
    old = json.loads(workstation_report.read_text())
    old.pop("device")
    old_path = tmp_path / "old.json"
    old_path.write_text(json.dumps(old))
    result = run_cli("report", "compare", old_path, workstation_report)
    assert result.returncode == 0, result.stderr
    assert "not recorded (a report from before device provenance)" in result.stdout


def test_bench_on_a_runtime_only_device_writes_its_report(workstation_report, tmp_path):
    """A device has edgecls[runtime] only: no matplotlib. The report is still written, the page says why it has no plots."""
    import os
    import textwrap

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] == "matplotlib":
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
    """))
    artifact = json.loads(workstation_report.read_text())["results"][0]["artifact"]
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    result = run_cli("bench", artifact, "--runs", "3", "--min-time", "0", "--warmup", "1", "--warmup-time", "0",
                     "--out", tmp_path / "out", env=env)
    assert result.returncode == 0, result.stderr
    assert "No plots: matplotlib is not installed" in (tmp_path / "out/bench.html").read_text()
    assert json.loads((tmp_path / "out/bench.json").read_text())["device"]["engines"]["litert"]
