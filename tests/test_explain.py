"""Grad-CAM on the shared ImageNet MobileNetV2, and on-device CAM from a TFLite export."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli

# A hand-checked box around the macaw in parrot.jpg (512x929): its head, breast, wing and the top of
# its tail, in (left, top, right, bottom) pixels. The rest of the photo is palm leaves, a trunk, sky.
PARROT_BOX = (140, 90, 480, 700)


@pytest.fixture(scope="module")
def imagenet(assets):
    import keras

    weights = assets / "models" / "keras" / "mobilenet_v2_1.0_224_imagenet1001.weights.h5"
    model = keras.applications.MobileNetV2(weights=str(weights), classes=1001, classifier_activation=None)
    labels = (assets / "models" / "coral" / "imagenet_labels.txt").read_text().splitlines()
    return model, labels


@pytest.fixture(scope="module")
def imagenet_keras_file(tmp_path_factory, imagenet):
    """The ImageNet model saved as an edgecls .keras model with its manifest (logits output)."""
    from edgecls.files import sha256_file
    from edgecls.manifest import Manifest
    from edgecls.preprocess import Preprocessing

    model, labels = imagenet
    path = tmp_path_factory.mktemp("imagenet") / "mobilenet_v2.keras"
    model.save(path)
    Manifest(format="keras", quantization="fp32", labels=labels, preprocessing=Preprocessing.named("tf", (224, 224)),
             input={"name": "image", "shape": [-1, 224, 224, 3], "dtype": "float32", "layout": "NHWC",
                    "quantization": None},
             output={"name": "logits", "shape": [-1, 1001], "dtype": "float32", "activation": "logits"},
             artifact_sha256=sha256_file(path)).save(path)
    return path


def _box_mask(shape, box):
    left, top, right, bottom = box
    mask = np.zeros(shape[:2], dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def test_gradcam_heat_is_on_the_parrot(assets, imagenet):
    from edgecls import cam
    from edgecls.explain import grad_cam
    from edgecls.preprocess import Preprocessing, read_rgb

    model, labels = imagenet
    rgb = read_rgb(assets / "images" / "imagenet-photos" / "parrot.jpg")
    pre = Preprocessing.named("tf", (224, 224))
    maps, logits = grad_cam(model, pre(rgb)[None])
    assert labels[int(logits[0].argmax())] == "macaw"
    heat = cam.heat_on_picture(rgb, maps[0], pre)
    inside = _box_mask(rgb.shape, PARROT_BOX)
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert inside[peak], f"the hottest pixel {peak} is off the parrot"
    # The box is ~40% of the photo; a map that ignored the bird would give a ratio near 1.
    # Measured ratio ~4.5; 2.5 leaves room for float differences between hosts (AVX2 vs AVX-512).
    assert heat[inside].mean() > 2.5 * heat[~inside].mean()


def test_gradcam_equals_cam_for_gap_dense_head(assets, imagenet):
    """For a GAP + dense head, Grad-CAM is the CAM scaled by 1/(h*w): a check on both implementations."""
    from edgecls.cam import class_activation_map
    from edgecls.explain import cam_kernel, grad_cam, split_model
    from edgecls.preprocess import Preprocessing, read_rgb

    model, _ = imagenet
    x = Preprocessing.named("tf", (224, 224))(read_rgb(assets / "images" / "imagenet-photos" / "cat.bmp"))[None]
    maps, logits = grad_cam(model, x, class_index=286)  # Egyptian cat
    fmap = np.asarray(split_model(model).features(x))[0]
    expected = class_activation_map(fmap, cam_kernel(model)[:, 286]) / (fmap.shape[0] * fmap.shape[1])
    np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_explain_cli_writes_overlays_and_a_gallery(assets, imagenet_keras_file, tmp_path):
    out = tmp_path / "explain"
    photos = assets / "images" / "imagenet-photos"
    proc = run_cli("explain", imagenet_keras_file, photos / "parrot.jpg", photos / "cat.bmp", "--out", out,
                   "--no-gallery")
    assert proc.returncode == 0, proc.stderr
    assert "parrot.jpg: predicted macaw" in proc.stdout
    assert (out / "parrot.macaw.gradcam.png").stat().st_size > 10_000
    # The other cases in-process: a subprocess pays TensorFlow's start-up each time.
    from typer.testing import CliRunner

    from edgecls.cli import app

    chosen = CliRunner().invoke(app, ["explain", str(imagenet_keras_file), str(photos / "parrot.jpg"), "--out", str(out),
                                      "--class", "lorikeet", "--no-gallery"])
    assert chosen.exit_code == 0 and (out / "parrot.lorikeet.gradcam.png").is_file(), chosen.output
    bad = CliRunner().invoke(app, ["explain", str(imagenet_keras_file), str(photos / "parrot.jpg"), "--out", str(out),
                                   "--class", "unicorn"])
    assert bad.exit_code == 2 and "unicorn" in bad.output
    assert isinstance(bad.exception, SystemExit)  # a clean exit, no traceback


def test_mistakes_gallery_escapes_names(assets, imagenet_keras_file, tmp_path):
    """A two-class 'dataset' of ImageNet photos the 1001-class model cannot all get right."""
    from edgecls.explain import mistakes_gallery

    data = tmp_path / "data"
    for label, photo in (("macaw", "parrot.jpg"), ("hotdog, hot dog, red hot", "bird.bmp"),
                         ("tabby, tabby cat", "cat.bmp")):
        (data / label).mkdir(parents=True)
        (data / label / ("<b>" + photo)).write_bytes((assets / "images" / "imagenet-photos" / photo).read_bytes())
    result = mistakes_gallery(imagenet_keras_file, data, tmp_path / "gallery", split="all")
    assert result["count"] == 3 and result["wrong"] == 2  # the chickadee is no hot dog; the cat is Egyptian
    page = (tmp_path / "gallery" / "mistakes.html").read_text()
    assert "&lt;b&gt;bird.bmp" in page and "<b>bird.bmp" not in page
    for row in result["rows"]:
        assert (tmp_path / "gallery" / row["overlay_predicted"]).is_file()


@pytest.fixture(scope="module")
def explain_tflite(tmp_path_factory, imagenet, imagenet_keras_file):
    """An fp32 TFLite export with the feature-map output, its manifest and CAM weights."""
    import keras
    import tensorflow as tf

    from edgecls.explain import export_explain_model
    from edgecls.files import sha256_file
    from edgecls.manifest import Manifest, load_manifest

    model, labels = imagenet
    out = tmp_path_factory.mktemp("explain_tflite")
    artifact = out / "model.tflite"
    two = export_explain_model(model, artifact, "tflite")
    two.export(str(out / "saved"), format="tf_saved_model", verbose=False,
               input_signature=[keras.InputSpec(shape=(1, 224, 224, 3), dtype="float32")])
    artifact.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(out / "saved")).convert())
    base = load_manifest(imagenet_keras_file)
    Manifest(format="tflite", quantization="fp32", labels=labels, preprocessing=base.preprocessing,
             input={"shape": [1, 224, 224, 3]}, output={"activation": "logits"},
             artifact_sha256=sha256_file(artifact)).save(artifact)
    return artifact


def test_on_device_cam_equals_keras_cam(assets, imagenet, explain_tflite):
    from edgecls.cam import FeatureMapRunner, class_activation_map, load_cam_weights
    from edgecls.explain import cam_kernel, split_model
    from edgecls.preprocess import read_rgb
    from edgecls.runtime import Classifier

    model, labels = imagenet
    clf = Classifier.from_artifact(explain_tflite)
    rgb = read_rgb(assets / "images" / "imagenet-photos" / "parrot.jpg")
    assert clf.predict(rgb, 1)[0][0] == "macaw"  # the runtime still reads the probabilities output
    outs = FeatureMapRunner(explain_tflite, len(labels)).run(clf.prepare(rgb))
    kernel = load_cam_weights(explain_tflite)
    np.testing.assert_array_equal(kernel, cam_kernel(model))
    x = clf.preprocessing(rgb)[None]
    keras_cam = class_activation_map(np.asarray(split_model(model).features(x))[0], kernel[:, 89])
    device_cam = class_activation_map(outs.feature_map, kernel[:, 89])
    # Same fp32 graph in two runtimes: differences are summation order only (~1e-5 relative).
    np.testing.assert_allclose(device_cam, keras_cam, atol=1e-3 * np.abs(keras_cam).max())


def test_predict_explain_cli(assets, explain_tflite, tmp_path):
    photo = assets / "images" / "imagenet-photos" / "parrot.jpg"
    proc = run_cli("predict", explain_tflite, photo, "--explain", "--explain-out", tmp_path, "--json")
    assert proc.returncode == 0, proc.stderr
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["top_k"][0][0] == "macaw" and line["overlay"].endswith("parrot.macaw.cam.png")
    assert (tmp_path / "parrot.macaw.cam.png").stat().st_size > 10_000
    explain_tflite.with_name("model.tflite.cam.npz").rename(tmp_path / "moved.npz")
    try:
        missing = run_cli("predict", explain_tflite, photo, "--explain", "--explain-out", tmp_path)
        assert missing.returncode == 2 and "cam.npz" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        (tmp_path / "moved.npz").rename(explain_tflite.with_name("model.tflite.cam.npz"))


def test_device_cam_module_stays_light():
    """On the device, CAM needs numpy, OpenCV and the engine: never TensorFlow or Keras."""
    import subprocess
    import sys

    code = ("import sys, edgecls.cam, edgecls.imbalance; "
            "heavy = [m for m in ('tensorflow', 'keras', 'sklearn', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_serve_live_view_offers_cam_for_an_explain_artifact(assets, explain_tflite, tmp_path):
    """`edgecls serve` on an artifact exported with the explain output: the page's CAM toggle is
    offered, and a viewer that turns it on gets heat-map frames from the same single inference."""
    import asyncio
    import shutil

    import aiohttp
    import cv2

    from serve_util import Server

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copyfile(assets / "images" / "imagenet-photos" / "parrot.jpg", photos / "parrot.jpg")
    server = Server(explain_tflite, photos, "--fps", "5", "--state-dir", tmp_path / "state", token=None)
    try:
        server.wait_ready(True)
        status, info = server.json("GET", "/api/status")
        assert status == 200 and info["model"]["cam"] is True

        async def frames(cam: bool):
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"http://127.0.0.1:{server.port}/ws?cam={int(cam)}") as ws:
                    for _ in range(10):  # frames inferred before the toggle reached the stream come plain
                        header = json.loads((await ws.receive(timeout=15)).data)
                        jpeg = (await ws.receive(timeout=15)).data
                        if header["cam"] == cam:
                            break
            return header, cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)

        plain_header, plain = asyncio.run(frames(False))
        cam_header, heat = asyncio.run(frames(True))
        assert plain_header["top_k"][0][0] == cam_header["top_k"][0][0] == "macaw"
        assert not plain_header["cam"] and cam_header["cam"]
        assert plain.shape == heat.shape and np.abs(plain.astype(int) - heat.astype(int)).mean() > 10
    finally:
        server.stop()
