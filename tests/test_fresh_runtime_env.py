"""The device install: a fresh virtual environment with only `edgecls[runtime]` predicts and streams."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import cv2
import pytest


HEAVY = {"tensorflow", "tensorflow-cpu", "keras", "tf-keras", "jax", "torch", "onnxruntime", "openvino", "nncf", "tf2onnx"}


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory):
    from edgecls.deploy.wheels import build_edgecls_wheel

    venv = tmp_path_factory.mktemp("runtime-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # The wheel as deploy builds it (from a copy of the sources, never in this checkout's build/,
    # which another test building a wheel at the same time would share).
    wheel = build_edgecls_wheel(tmp_path_factory.mktemp("wheel"))
    install = subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", f"{wheel}[runtime]"],
                             capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        pytest.fail(f"pip install edgecls[runtime] failed:\n{install.stderr[-3000:]}")
    return venv


def test_runtime_extra_installs_no_heavy_packages(runtime_venv):
    listed = subprocess.run([str(runtime_venv / "bin/python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"numpy", "opencv-python-headless", "ai-edge-litert", "edgecls"} <= names
    assert not names & HEAVY, names & HEAVY


def test_fresh_runtime_predicts_and_streams(runtime_venv, coral, assets, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    model, labels = coral / "mobilenet_v2_1.0_224_quant.tflite", coral / "imagenet_labels.txt"
    exe = str(runtime_venv / "bin/edgecls")
    predicted = subprocess.run([exe, "predict", str(model), str(assets / "images/imagenet-photos/parrot.jpg"),
                                "--labels", str(labels), "--json"], capture_output=True, text=True, env=env,
                               cwd=tmp_path, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout.strip().splitlines()[-1])["top_k"][0][0] == "macaw"
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    img = cv2.resize(cv2.imread(str(assets / "images/imagenet-photos/parrot.jpg")), (320, 240))
    for _ in range(5):
        writer.write(img)
    writer.release()
    streamed = subprocess.run([exe, "stream", str(model), str(video), "--labels", str(labels), "--stats-interval", "0"],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert streamed.returncode == 0, streamed.stderr
    lines = [json.loads(x) for x in streamed.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 5 and all(x["top_k"][0][0] == "macaw" for x in lines)
    modules = subprocess.run([str(runtime_venv / "bin/python"), "-c",
                              "import sys, edgecls.runtime, edgecls.stream, edgecls.cli; "
                              "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow','keras')))"],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert modules.stdout.strip() == "[]", modules.stderr
