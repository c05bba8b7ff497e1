"""`edgecls serve` as a LAN attacker tries it (issue 25, serve items S2, S5-S10, S12-S15), on real
servers on 127.0.0.1: what open routes and logs say, a client's overflowing or malformed input,
updates with nothing to compare against, duplicates and rollback, the watched folder's links and
refused files, the Authorization scheme, and the systemd unit's refusals."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from serve_util import TOKEN, Server, coral_manifest, onnx_manifest, poll

LABELS = ["cat", "dog", "bird", "fish"]


def float_onnx(out: Path, nan: bool = False) -> Path:
    """A small real FP32 model (onnxruntime): a 32x32 RGB picture in [0, 1], flattened, one dense
    layer, softmax; its manifest beside it. `nan`: a NaN weight, so it answers NaN for every input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgecls.files import sha256_file
    from edgecls.manifest import Manifest
    from edgecls.preprocess import Preprocessing

    out.mkdir(parents=True, exist_ok=True)
    # Positive weights of ~0.005: 3072 inputs of 3e38 sum to ~5e39, past FP32's 3.4e38 (inf, then NaN).
    weights = np.random.default_rng(0).uniform(0.001, 0.01, (3072, len(LABELS))).astype(np.float32)
    if nan:
        weights[0, 0] = np.nan
    nodes = [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Softmax", ["m"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 32, 32, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(LABELS)])],
                              [numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    artifact = out / "tiny.onnx"
    onnx.save(model, artifact)
    Manifest(format="onnx", quantization="fp32", labels=LABELS, preprocessing=Preprocessing.named("unit", (32, 32)),
             output={"activation": "softmax"}, artifact_sha256=sha256_file(artifact)).save(artifact)
    return artifact


def photo(assets: Path, name: str = "parrot.jpg") -> bytes:
    return (assets / "images/imagenet-photos" / name).read_bytes()


def upload(port: int, artifact: Path, manifest: bytes | None = None, checks: tuple = (), query: str = ""):
    """PUT a model (multipart, as README shows) with aiohttp; (status, JSON answer)."""
    import aiohttp

    async def go():
        form = aiohttp.FormData()
        for name, image in checks:
            form.add_field("check", image, filename=name)
        form.add_field("artifact", artifact.read_bytes(), filename="model")
        form.add_field("manifest", manifest if manifest is not None else
                       artifact.with_name(artifact.name + ".json").read_bytes(), filename="m.json")
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async with session.put(f"http://127.0.0.1:{port}/v2/models/model/artifact{query}", data=form) as r:
                return r.status, await r.json()

    return asyncio.run(go())


def post(server: Server, path: str) -> tuple[int, dict]:
    return server.json("POST", path, b"")


def relabelled(artifact: Path, labels: list[str]) -> bytes:
    """The artifact's manifest with another label order (a mislabelled export: same weights)."""
    doc = json.loads(artifact.with_name(artifact.name + ".json").read_text())
    return json.dumps({**doc, "labels": labels}).encode()


def with_check_images(coral: Path, assets: Path, labels: list[str], out: Path, name: str) -> Path:
    """The Coral model with three check images, stored as `edgecls export` stores them (its own code)."""
    from edgecls.check_images import write_checks
    from edgecls.manifest import load_manifest
    from edgecls.preprocess import read_rgb
    from edgecls.runtime import Classifier

    artifact = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, out, name)
    pictures = [read_rgb(assets / "images/imagenet-photos" / p) for p in ("parrot.jpg", "bird.bmp", "hot_dog.jpg")]
    entries, _ = write_checks(artifact, Classifier.from_artifact(artifact), pictures, select=False)
    manifest = load_manifest(artifact)
    manifest.checks = entries
    manifest.save(artifact)
    return artifact


def check_parts(artifact: Path) -> tuple:
    return tuple((p.name, p.read_bytes()) for p in sorted(artifact.with_name(artifact.name + ".checks").iterdir()))


def coral_labels(coral: Path) -> list[str]:
    return (coral / "imagenet_labels.txt").read_text().splitlines()


# --- S2: open routes, logs and status never show a secret ----------------------------------------
def test_open_routes_logs_and_status_keep_secrets(tmp_path, assets):
    """A source URL with a password and an engine that fails (NaN weights): the open health routes
    say what is wrong in general terms (no URL, no path, no exception text); the token-protected
    status says it in detail with the password redacted; the log never holds the password."""
    model = float_onnx(tmp_path / "broken", nan=True)
    secret = "rtsp://admin:S3cretPass@127.0.0.1:9/stream1"
    server = Server(model, secret, "--state-dir", tmp_path / "state", "--stale-after", "0.5")
    try:
        for _ in range(3):  # known-good inputs (pictures the server prepares): the engine's fault
            status, out = server.json("POST", "/classify", photo(assets), headers={"Content-Type": "image/jpeg"})
            assert status == 500 and str(tmp_path) not in out["error"] and "finite" not in out["error"], out
        server.wait_ready(False)
        for route in ("/v2/health/ready", "/v2/health/live"):
            status, _, body = server.request("GET", route, auth=False)
            text = body.decode()
            for private in ("S3cretPass", "admin", "rtsp", "127.0.0.1:9", str(tmp_path), "tiny.onnx", "finite",
                            "Error"):
                assert private not in text, (route, private, text)
        reasons = json.loads(server.request("GET", "/v2/health/ready", auth=False)[2])["reasons"]
        assert "the engine is failing (the server log says why)" in reasons
        assert "no frame from the source for 0.5 s" in reasons
        status, state = server.json("GET", "/api/status")
        assert status == 200 and state["source"] == "rtsp://***@127.0.0.1:9/stream1"
        assert any(r.startswith("the engine failed 3 times in a row: ModelError") for r in state["reasons"]), state
        assert any(r.startswith("no frame from rtsp://***@127.0.0.1:9/stream1") for r in state["reasons"]), state
        assert "S3cretPass" not in json.dumps(state)
        assert b"S3cretPass" not in server.request("GET", "/metrics")[2]
        assert server.request("GET", "/api/status", auth=False)[0] == 401
    finally:
        server.stop()
    log = "".join(server.log)
    assert "S3cretPass" not in log and "rtsp://***@127.0.0.1:9/stream1" in log, log[-2000:]


def test_redaction_covers_the_usual_ways_to_carry_credentials():
    from edgecls.console import redact

    assert redact("rtsp://admin:S3cret@cam:554/s1: cannot open") == "rtsp://***@cam:554/s1: cannot open"
    assert redact("'rtsp://u:p@ss@cam/x'") == "'rtsp://***@cam/x'"  # a raw "@" in the password
    assert redact("rtspsrc location=rtsp://cam/x user-id=admin user-pw=hunter2 ! decodebin") == \
        "rtspsrc location=rtsp://cam/x user-id=*** user-pw=*** ! decodebin"
    assert redact("http://cam/video.cgi?user=admin&password=x1&res=2") == "http://cam/video.cgi?user=admin&password=***&res=2"
    assert redact("/home/pi/model.tflite and http://host/path") == "/home/pi/model.tflite and http://host/path"


# --- a float model behind a token, for S5, S6/S7 and S14 -----------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny")
    server = Server(float_onnx(tmp / "model"), "--state-dir", tmp / "state")
    try:
        yield server
    finally:
        server.stop()


def infer(server: Server, doc, headers: dict | None = None, path: str = "/v2/models/tiny/infer"):
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    status, _, data = server.request("POST", path, body, headers={"Content-Type": "application/json", **(headers or {})})
    return status, json.loads(data)


def tensor(data, shape=(1, 32, 32, 3), datatype="FP32") -> dict:
    return {"inputs": [{"name": "input", "shape": list(shape), "datatype": datatype, "data": data}]}


# --- S5: a request's bad input is the request's fault --------------------------------------------
def test_an_overflowing_tensor_is_the_clients_fault_and_readiness_stays(tiny):
    for _ in range(4):  # three in a row turned readiness off
        status, out = infer(tiny, tensor([3e38] * 3072))
        assert status == 400, out
        assert "input tensor" in out["error"] and "3e+38" in out["error"], out
        for blame in ("retrain", "weights", "re-export", "/", "tiny.onnx"):
            assert blame not in out["error"].replace("GET /v2/models/NAME", ""), (blame, out)
    assert tiny.json("GET", "/v2/health/ready", auth=False) == (200, {"ready": True})
    nan = np.full(3072, np.nan, np.float32).tobytes()
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 32, 32, 3], "datatype": "FP32",
                                   "parameters": {"binary_data_size": len(nan)}}]}).encode()
    status, out = infer(tiny, head + nan, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "not finite" in out["error"], out  # the binary tensor is checked like JSON data
    status, out = infer(tiny, tensor([0.5] * 3072))
    assert status == 200 and len(out["outputs"][0]["data"]) == len(LABELS), out
    time.sleep(0.3)
    assert tiny.json("GET", "/v2/health/ready", auth=False) == (200, {"ready": True})


# --- S6/S7: the inference body by its schema, strictly ------------------------------------------
def _set(doc: dict, path: tuple, value) -> dict:
    doc = json.loads(json.dumps(doc))
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def test_malformed_inference_bodies_are_4xx_with_the_field_named(tiny, assets):
    base = {"id": "a", **tensor([0.5] * 3072), "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    assert infer(tiny, base)[0] == 200
    named = {("inputs", 0, "shape", 0): (True, "inputs[0].shape[0]"), ("inputs", 0, "parameters"): ("x", "inputs[0].parameters"),
             ("outputs", 0, "parameters"): (5, "outputs[0].parameters"),
             ("outputs", 0, "parameters", "classification"): (True, "classification"),
             ("inputs", 0, "data"): (["0.5"] * 3072, "inputs[0].data[0]"), ("inputs", 0, "datatype"): ("FLOAT32", "datatype"),
             ("id",): (5, "id"), ("inputs", 0, "data", 7): (True, "inputs[0].data[7]")}
    for path, (value, where) in named.items():
        status, out = infer(tiny, _set(base, path, value))
        assert status == 400 and where in out["error"], (path, value, out)
    # Every field replaced by every JSON kind: a 4xx with a reason (or, where still valid, a 200), never a 500.
    paths = [("id",), ("inputs",), ("inputs", 0), ("inputs", 0, "name"), ("inputs", 0, "shape"), ("inputs", 0, "shape", 0),
             ("inputs", 0, "shape", 3), ("inputs", 0, "datatype"), ("inputs", 0, "parameters"), ("inputs", 0, "data"),
             ("inputs", 0, "data", 0), ("outputs",), ("outputs", 0), ("outputs", 0, "name"), ("outputs", 0, "parameters"),
             ("outputs", 0, "parameters", "classification")]
    values = [True, False, None, "x", 5, -1, 0, 1.5, 10 ** 40, [], {}, [True], {"b64": 1}, float("inf")]
    answers = [infer(tiny, _set(base, p, v)) for p in paths for v in values]
    assert all(s == 200 or (400 <= s < 500 and out.get("error")) for s, out in answers), \
        [(p, v, a) for p in paths for v in values for a in [infer(tiny, _set(base, p, v))] if a[0] >= 500 or a[0] < 400][:3]
    nested = np.full((1, 32, 32, 3), 0.5).tolist()  # row-major nested lists are data too
    assert infer(tiny, tensor(nested))[0] == 200
    nested[0][3][2][1] = "0.5"
    status, out = infer(tiny, tensor(nested))
    assert status == 400 and "inputs[0].data[0][3][2][1]: expected a number (FP32), got a string" in out["error"], out
    # Binary BYTES: a length prefix beyond the body is refused, not sliced.
    jpeg = photo(assets)
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(jpeg) + 4}}]}).encode()
    status, out = infer(tiny, head + struct.pack("<I", 10 ** 9) + jpeg, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and "claims 1000000000 bytes" in out["error"], out
    status, out = infer(tiny, head + struct.pack("<I", len(jpeg)) + jpeg, {"Inference-Header-Content-Length": str(len(head))})
    assert status == 200, out
    status, out = infer(tiny, head + struct.pack("<I", len(jpeg)) + jpeg, {"Inference-Header-Content-Length": "\u00b2"})
    assert status == 400 and "Inference-Header-Content-Length" in out["error"], out
    # /classify?k= takes ASCII digits only: int("²") raises, int("٣") is 3.
    for k in ("%C2%B2", "%D9%A3", "0", "1001", "-1", "3.0"):
        status, out = tiny.json("POST", f"/classify?k={k}", jpeg, headers={"Content-Type": "image/jpeg"})
        assert status == 400 and "query parameter k=" in out["error"], (k, out)
    status, out = tiny.json("POST", "/classify?k=3", jpeg, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and len(out["top_k"]) == 3


# --- S14: the Authorization scheme is case-insensitive; tokens compared in constant time ----------
def test_the_bearer_scheme_is_case_insensitive(tiny, monkeypatch):
    for header in (f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer  {TOKEN}", f"Bearer {TOKEN} "):
        assert tiny.request("GET", "/v2", auth=False, headers={"Authorization": header})[0] == 200, header
    for header in (f"Basic {TOKEN}", f"bearer {TOKEN}x", f"Bearer{TOKEN}", "bearer", ""):
        assert tiny.request("GET", "/v2", auth=False, headers={"Authorization": header})[0] == 401, header
    # The comparison is hmac.compare_digest over two SHA-256 digests: always 32 bytes against 32 bytes.
    import hmac

    from edgecls.serve import app

    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(app.hmac, "compare_digest", lambda a, b: seen.append((len(a), len(b))) or real(a, b))
    assert app.token_matches(TOKEN, TOKEN) and not app.token_matches("x", TOKEN) and not app.token_matches(TOKEN * 9, TOKEN)
    assert seen == [(32, 32)] * 3


# --- S8: nothing to compare with: refused unless its check images pass, or forced -----------------
def test_an_update_with_nothing_to_compare_with_needs_check_images_or_force(coral, assets, tmp_path):
    labels = coral_labels(coral)
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    state = tmp_path / "state"
    fresh = Server(model, "--state-dir", state)
    try:
        status, out = upload(fresh.port, model, relabelled(model, labels[::-1]))
        assert status == 422 and "nothing to compare its answers with" in out["error"] and "?force=true" in out["error"], out
        assert fresh.json("GET", "/v2/models/model")[1]["versions"] == ["1"]
        status, out = upload(fresh.port, model, relabelled(model, labels[1:] + labels[:1]), query="?force=true")
        assert status == 200 and out["checks"]["forced"] is True and out["model"]["version"] == "2", out
        poll(lambda: any("swapped in unchecked: forced" in line for line in fresh.log), 5)
        checked = with_check_images(coral, assets, labels, tmp_path / "checked", "checked.tflite")
        status, out = upload(fresh.port, checked, checks=check_parts(checked))  # its own check images vouch for it
        assert status == 200 and out["checks"]["stored"] == "3/3 answered as at export" and "forced" not in out["checks"]
        # A picture seen, then a restart: the pool of reference pictures comes back from the state folder.
        assert fresh.json("POST", "/classify", photo(assets), headers={"Content-Type": "image/jpeg"})[0] == 200
        time.sleep(0.5)  # the reference is kept off the event loop
    finally:
        assert fresh.stop() == 0
    assert 1 <= len(list((state / "references").glob("ref-*.jpg"))) <= 8
    again = Server(model, "--state-dir", state)
    try:
        status, out = upload(again.port, model, relabelled(model, labels[::-1]))
        assert status == 422 and "agree" in out["error"] and out["checks"]["references"] >= 1, out
    finally:
        again.stop()


# --- S9/S10: duplicates, rollback by content, --no-resume keeps the updates -----------------------
def test_updates_are_kept_deduplicated_and_rolled_back_by_content(coral, assets, tmp_path):
    labels = coral_labels(coral)
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    good = onnx_manifest(assets / "models/onnx/mobilenetv2-12-int8.onnx", labels, tmp_path / "good")
    state = tmp_path / "state"
    models = state / "models"
    server = Server(model, "--state-dir", state)
    try:
        assert server.json("POST", "/classify", photo(assets), headers={"Content-Type": "image/jpeg"})[0] == 200
        time.sleep(0.3)  # a reference picture to compare the update with
        status, out = upload(server.port, good)
        assert status == 200 and out["model"]["version"] == "2", out
        status, out = upload(server.port, good)  # the same upload again: no new version, no new copy
        assert status == 200 and out["swapped"] is False and out["model"]["version"] == "2", out
        assert len([p for p in models.iterdir() if p.name.startswith("v")]) == 1
        status, out = post(server, "/v2/models/model/rollback")
        assert status == 200 and out["model"]["version"] == "1" and out["model"]["format"] == "tflite", out
        status, out = post(server, "/v2/models/model/rollback")  # the model before the current one: v2 again
        assert status == 200 and out["model"]["version"] == "2" and out["model"]["format"] == "onnx", out
    finally:
        assert server.stop() == 0
    kept = sorted(p.name for p in models.iterdir())
    plain = Server(model, "--state-dir", state, "--no-resume")
    try:
        meta = plain.json("GET", "/v2/models/model")[1]
        assert meta["versions"] == ["1"] and meta["parameters"]["edgecls"]["file"] == "model.tflite"
        assert sorted(p.name for p in models.iterdir()) == kept  # --no-resume deleted nothing
        status, out = post(plain, "/v2/models/model/rollback")
        assert status == 200 and out["model"]["version"] == "2" and out["model"]["format"] == "onnx", out
    finally:
        plain.stop()


# --- S12/S13: the watched folder ----------------------------------------------------------------
def _read_bytes(pid: int) -> int:
    """Bytes the process has read through read() calls (/proc/PID/io rchar), page cache included."""
    return int(next(line.split()[1] for line in Path(f"/proc/{pid}/io").read_text().splitlines()
                    if line.startswith("rchar:")))


def test_the_watched_folder_neither_leaves_itself_nor_rehashes_a_refused_file(coral, tmp_path):
    labels = coral_labels(coral)
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    elsewhere = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels[::-1], outside, "other.tflite")
    server = Server(model, "--state-dir", tmp_path / "state", "--watch", watched, token=None)
    try:
        # S12: a link to a model outside the folder, with a real manifest inside it.
        (watched / "linked.tflite").symlink_to(elsewhere)
        shutil.copyfile(elsewhere.with_name("other.tflite.json"), watched / "linked.tflite.json")
        poll(lambda: any("--watch: linked.tflite refused: linked.tflite leads outside" in line for line in server.log), 15)
        assert server.json("GET", "/v2/models/model")[1]["versions"] == ["1"]
        # S13: a big file that never matches its manifest: refused once, then left alone until it changes.
        big = watched / "big.tflite"
        big.write_bytes(os.urandom(48 << 20))
        doc = json.loads(model.with_name("model.tflite.json").read_text())
        (watched / "big.tflite.json").write_text(json.dumps({**doc, "artifact_sha256": "0" * 64}))
        poll(lambda: any("big.tflite refused: it does not match its manifest's checksum" in line for line in server.log), 15)
        before = _read_bytes(server.proc.pid)
        time.sleep(6.5)  # three passes of the watch (every 2 s)
        read = _read_bytes(server.proc.pid) - before
        assert read < 8 << 20, f"{read / 2**20:.0f} MB read while nothing changed"  # was 48 MB a pass
        assert sum("big.tflite" in line for line in server.log) == 1
        os.utime(big, ns=(time.time_ns(), time.time_ns()))  # changed: looked at (and refused) again
        poll(lambda: sum("big.tflite refused" in line for line in server.log) == 2, 15)
    finally:
        server.stop()


# --- S15: the unit refuses what would crash-loop; not root by default -----------------------------
def test_serve_unit_refuses_a_crash_loop_and_root_and_explains_tmp(coral, tmp_path, monkeypatch):
    import getpass

    from typer.testing import CliRunner

    from edgecls.cli import app

    model = str(coral / "mobilenet_v2_1.0_224_quant.tflite")
    unit = tmp_path / "edgecls.service"
    run = CliRunner().invoke
    open_host = run(app, ["serve-unit", "--user", "nobody", "--out", str(unit), "--", model, "--host", "0.0.0.0"],
                    env={"EDGECLS_TOKEN": TOKEN})  # the unit does not carry this environment
    assert open_host.exit_code == 2 and "--token-file" in open_host.output and "every 3 s" in open_host.output
    assert not unit.exists()
    in_tmp = run(app, ["serve-unit", "--user", "nobody", "--out", str(unit), "--", model, "--state-dir", "/tmp/edgecls-state",
                       "--host", "0.0.0.0", "--token-file", "/etc/edgecls/token"])
    assert in_tmp.exit_code == 0 and "--state-dir /tmp/edgecls-state lies under /tmp" in in_tmp.output, in_tmp.output
    assert "PrivateTmp=yes" in in_tmp.output
    monkeypatch.setattr(getpass, "getuser", lambda: "root")
    monkeypatch.delenv("SUDO_USER", raising=False)
    as_root = run(app, ["serve-unit", "--out", str(unit), "--", model, "0"])
    assert as_root.exit_code == 2 and "would run as root" in as_root.output and "--user NAME" in as_root.output
    monkeypatch.setenv("SUDO_USER", "pi")
    made = run(app, ["serve-unit", "--out", str(unit), "--", model, "0"])
    assert made.exit_code == 0 and "\nUser=pi\n" in unit.read_text(), made.output
    named = run(app, ["serve-unit", "--user", "root", "--out", str(unit), "--", model, "0"])
    assert named.exit_code == 0 and "\nUser=root\n" in unit.read_text()
