"""`edgecls serve` as a real process on 127.0.0.1 (an ephemeral port): health, metadata, the token,
KServe v2 inference on a tensor and on image bytes, /classify, Prometheus metrics, bad input, a
full queue, engine failure and recovery, SIGTERM, and the command line (exposure, systemd unit).
The stream, viewers and model updates are in test_serve_live.py."""
from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from serve_util import TOKEN, Server, coral_manifest, multipart, photo_bytes, poll, serving


@pytest.fixture(scope="module")
def served(tmp_path_factory, assets, coral):
    with serving(tmp_path_factory, assets, coral) as served:
        yield served


@pytest.fixture(scope="module")
def reference(served):
    """The same artifact opened in this process: what `edgecls predict` answers."""
    from edgecls.runtime import Classifier

    return Classifier.from_artifact(served.model)


def photo(assets, name: str) -> Path:
    return assets / "images/imagenet-photos" / name


def test_health_page_and_token(served):
    s = served.server
    assert s.json("GET", "/v2/health/live", auth=False) == (200, {"live": True})
    assert s.json("GET", "/v2/health/ready", auth=False) == (200, {"ready": True})
    status, headers, body = s.request("GET", "/", auth=False)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"edgecls live" in body
    for path in ("/v2/models/model", "/metrics", "/api/status", "/ws", "/stream.mjpg"):
        status, headers, body = s.request("GET", path, auth=False)
        assert status == 401 and "token" in json.loads(body)["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert s.request("GET", path, auth=False, headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})[0] == 401
    status, meta = s.json("GET", "/v2/models/model")
    assert status == 200 and meta["name"] == "model" and meta["versions"] == ["1"]
    assert meta["platform"] == "tensorflow_lite"
    assert meta["inputs"][0] == {"name": meta["inputs"][0]["name"], "datatype": "UINT8", "shape": [1, 224, 224, 3]}
    assert meta["outputs"][0]["shape"] == [-1, 1001] and meta["parameters"]["edgecls"]["classes"] == 1001
    assert s.json("GET", "/v2/models/other")[0] == 404
    assert s.json("GET", "/v2/models/model/ready")[0] == 200


def test_classify_answers_as_the_runtime_does(served, reference, assets):
    s = served.server
    status, out = s.json("POST", "/classify?k=3", photo(assets, "hot_dog.jpg").read_bytes(),
                         headers={"Content-Type": "image/jpeg"})
    assert status == 200, out
    want = reference.predict(photo(assets, "hot_dog.jpg"), 3)
    assert [label for label, _ in out["top_k"]] == [label for label, _ in want]
    assert np.allclose([p for _, p in out["top_k"]], [p for _, p in want], atol=1e-6)
    assert out["model"]["version"] == "1" and out["latency_ms"]["inference"] > 0
    # A multipart upload whose declared type is wrong: the bytes (an RGBA PNG) decide.
    png = assets / "images/labeled-photos/broccoli.png"
    body, ctype = multipart({"image": ("x.txt", png.read_bytes(), "text/plain")})
    status, out = s.json("POST", "/classify", body, headers={"Content-Type": ctype})
    assert status == 200 and out["top_k"][0][0] == reference.predict(png, 1)[0][0] == "broccoli"


def test_v2_infer_on_a_tensor_and_on_image_bytes(served, reference, assets):
    from edgecls.preprocess import read_rgb

    s = served.server
    rgb = read_rgb(photo(assets, "parrot.jpg"))
    tensor = reference.prepare(rgb)[None]
    request = {"id": "t1", "inputs": [{"name": "input", "shape": list(tensor.shape), "datatype": "UINT8",
                                       "data": tensor.reshape(-1).tolist()}]}
    status, out = s.json("POST", "/v2/models/model/infer", request)
    assert status == 200, out
    assert out["id"] == "t1" and out["model_version"] == "1" and out["outputs"][0]["shape"] == [1, 1001]
    np.testing.assert_allclose(out["outputs"][0]["data"], reference.scores([rgb])[0], atol=1e-6)
    # JPEG/BMP bytes as a BYTES input (base64 in JSON), with the classification extension.
    cat = base64.b64encode(photo(assets, "cat.bmp").read_bytes()).decode()
    request = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [cat]}],
               "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}
    status, out = s.json("POST", "/v2/models/model/infer", request)
    assert status == 200 and out["outputs"][0]["shape"] == [1, 2] and out["outputs"][0]["datatype"] == "BYTES"
    assert out["outputs"][0]["data"][0].endswith(":Egyptian cat")
    # The binary tensor extension: JSON header, then length-prefixed JPEG bytes.
    jpeg = photo(assets, "parrot.jpg").read_bytes()
    head = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": len(jpeg) + 4}}]}).encode()
    status, out = s.json("POST", "/v2/models/model/infer", head + struct.pack("<I", len(jpeg)) + jpeg,
                         headers={"Inference-Header-Content-Length": str(len(head))})
    assert status == 200 and int(np.argmax(out["outputs"][0]["data"])) == served.labels.index("macaw")


def test_metrics_parse_with_the_prometheus_parser(served):
    from prometheus_client.parser import text_string_to_metric_families

    s = served.server
    s.request("POST", "/classify", photo_bytes(served), headers={"Content-Type": "image/jpeg"})
    status, headers, body = s.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    requests = {(x.labels["route"], x.labels["code"]): x.value for x in families["edgecls_http_requests"].samples
                if x.name.endswith("_total")}
    assert requests[("/classify", "200")] >= 1
    frames = {x.labels["state"]: x.value for x in families["edgecls_stream_frames"].samples}
    assert frames["processed"] > 0 and frames["dropped"] >= 0
    assert families["edgecls_http_request_seconds"].type == "histogram"
    assert families["edgecls_inference_seconds"].samples
    assert [x.labels["version"] for x in families["edgecls_model_info"].samples] == ["1"]
    assert families["edgecls_ready"].samples[0].value == 1


def read_response(sock: socket.socket) -> bytes:
    """One HTTP response (head and Content-Length body) from a socket."""
    answer = b""
    while b"\r\n\r\n" not in answer and (chunk := sock.recv(65536)):
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next((line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0))
    while len(body) < length and (chunk := sock.recv(65536)):
        body += chunk
    return head + b"\r\n\r\n" + body


def raw_exchange(port: int, head: bytes, body_part: bytes) -> bytes:
    """Send a request head and part of its body by hand; return what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body_part)
        return read_response(sock)


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header announces a huge picture."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_bad_input_is_answered_4xx_and_the_server_keeps_serving(served):
    s = served.server
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    status, out = s.json("POST", "/classify", b"this is not an image", headers={"Content-Type": "image/jpeg"})
    assert status == 400 and "not an image" in out["error"]
    status, out = s.json("POST", "/classify", png_header(20000, 20000), headers={"Content-Type": "image/png"})
    assert status == 413 and "20000x20000" in out["error"]
    big = raw_exchange(s.port, f"POST /classify HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: image/jpeg\r\n"
                               f"Content-Length: {50 << 20}\r\n\r\n".encode(), b"\0" * 65536)
    assert big.startswith(b"HTTP/1.1 413") and b"larger than 8 MB" in big
    wrong = {"inputs": [{"name": "input", "shape": [1, 100, 100, 3], "datatype": "UINT8", "data": [0] * 30000}]}
    status, out = s.json("POST", "/v2/models/model/infer", wrong)
    assert status == 400 and "[-1, 224, 224, 3]" in out["error"]
    wrong["inputs"][0].update(shape=[1, 224, 224, 3], datatype="FP32", data=[0.0] * (224 * 224 * 3))
    status, out = s.json("POST", "/v2/models/model/infer", wrong)
    assert status == 400 and "UINT8" in out["error"]
    assert s.json("POST", "/v2/models/model/infer", b"{not json", headers={})[0] == 400
    # A client that stops sending its body: cut off after --read-timeout (1 s) while others are served.
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as slow:
        slow.sendall(f"POST /classify HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100000\r\n\r\n".encode() + b"\xff" * 100)
        assert s.json("POST", "/classify", photo_bytes(served), headers={"Content-Type": "image/jpeg"})[0] == 200
        answer = read_response(slow)
    assert answer.startswith(b"HTTP/1.1 408") and time.perf_counter() - start < 8
    assert s.json("POST", "/classify", photo_bytes(served), headers={"Content-Type": "image/jpeg"})[1]["top_k"][0][0] == "macaw"
    assert s.json("GET", "/v2/health/ready", auth=False)[0] == 200


def test_a_burst_beyond_the_queue_is_answered_503_with_retry_after(served):
    import aiohttp

    # 30 connections send at once: their handlers start (and take a slot) as their headers arrive,
    # within a millisecond on loopback, long before the first decode (~10 ms) frees one.
    body = photo_bytes(served)

    async def burst():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async def one():
                async with session.post(f"http://127.0.0.1:{served.server.port}/classify", data=body,
                                        headers={"Content-Type": "image/jpeg"}) as r:
                    return r.status, r.headers.get("Retry-After"), await r.json()
            return await asyncio.gather(*(one() for _ in range(30)))

    answers = asyncio.run(burst())
    busy = [a for a in answers if a[0] == 503]
    assert busy and all(int(retry) >= 1 and "busy" in out["error"] for _, retry, out in busy)
    assert all(status == 200 for status, _, _ in answers if status != 503)
    assert len(answers) - len(busy) >= 6  # the admitted ones were answered
    assert served.server.json("POST", "/classify", photo_bytes(served), headers={"Content-Type": "image/jpeg"})[0] == 200


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except OSError:
        return True


def test_sigterm_finishes_the_request_in_progress(coral, assets, tmp_path):
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    server = Server(model, "--state-dir", tmp_path / "state", token=None)
    jpeg = photo(assets, "parrot.jpg").read_bytes()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
            sock.sendall(f"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg[:1000])
            time.sleep(0.3)
            server.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + 10
            while not any("stopping" in line for line in server.log) and time.time() < deadline:
                time.sleep(0.05)
            poll(lambda: refused(server.port), 5)  # no new connections once stopping
            sock.sendall(jpeg[1000:])
            answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["top_k"][0][0] == "macaw"
        assert server.proc.wait(20) == 0
    finally:
        server.stop()


class FlakyEngine:
    """A real engine that fails while `broken` is set (an unplugged accelerator, say)."""

    def __init__(self, engine):
        self._engine, self.broken = engine, False

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def run(self, batch):
        if self.broken:
            raise RuntimeError("engine unplugged")
        return self._engine.run(batch)


def test_engine_failures_turn_readiness_off_until_the_engine_answers_again(coral):
    from edgecls.runtime import Classifier
    from edgecls.serve.engine import EngineWorker, LoadedModel

    path = coral / "mobilenet_v2_1.0_224_quant.tflite"
    clf = Classifier.from_artifact(path, labels=coral / "imagenet_labels.txt")
    clf.engine = flaky = FlakyEngine(clf.engine)
    model = LoadedModel(clf, 1, "", path, "test")
    worker = EngineWorker(probe_after=0.2)
    worker.current = lambda: model
    worker.start()
    try:
        inputs = clf.prepare(np.zeros((224, 224, 3), np.uint8))[None]
        flaky.broken = True
        for _ in range(3):
            with pytest.raises(RuntimeError, match="unplugged"):
                worker.run_blocking(model, inputs)
        assert not worker.healthy and "unplugged" in worker.last_error
        time.sleep(0.5)
        assert not worker.healthy  # the probes fail too while it is broken
        flaky.broken = False
        poll(lambda: worker.healthy, 5)  # a probe found it answering, with no request needed
        assert worker.run_blocking(model, inputs).scores.shape == (1, 1001)
    finally:
        worker.stop()


def test_command_line_refuses_exposure_and_writes_a_unit(coral, tmp_path):
    from typer.testing import CliRunner

    from edgecls.cli import app

    model = coral / "mobilenet_v2_1.0_224_quant.tflite"
    run = CliRunner().invoke
    exposed = run(app, ["serve", str(model), "--host", "0.0.0.0", "--labels", str(coral / "imagenet_labels.txt")],
                  env={"EDGECLS_TOKEN": ""})
    assert exposed.exit_code == 2 and "--token-file" in exposed.output
    token = tmp_path / "token"
    token.write_text(TOKEN)
    unit = tmp_path / "edgecls.service"
    made = run(app, ["serve-unit", "--user", "nobody", "--out", str(unit), "--", str(model), "0", "--host", "0.0.0.0",
                     "--token-file", str(token)])
    assert made.exit_code == 0, made.output
    text = unit.read_text()
    assert "Restart=on-failure" in text and "KillSignal=SIGTERM" in text and "StateDirectory=edgecls" in text
    assert f"-m edgecls.cli serve {model} 0 --host 0.0.0.0 --token-file {token} --state-dir /var/lib/edgecls" in text
    import subprocess

    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr  # systemd's own reading of the unit
    leaked = run(app, ["serve-unit", "--user", "nobody", "--out", str(unit), "--", str(model), "--token", TOKEN])
    assert leaked.exit_code == 2 and "--token-file" in leaked.output
    typo = run(app, ["serve-unit", "--user", "nobody", "--out", str(unit), "--", str(model), "--prot", "80"])
    assert typo.exit_code == 2 and "do not parse" in typo.output
    # The same unit runs `edgecls stream` for a deploy bundle's stream service, its arguments parsed by stream.
    streamed = run(app, ["serve-unit", "--user", "nobody", "--command", "stream", "--out", str(unit), "--python", "/opt/edgecls/py",
                         "--", str(model), "0", "--target", "raspberrypi4"])
    assert streamed.exit_code == 0, streamed.output
    assert f"ExecStart=/opt/edgecls/py -m edgecls.cli stream {model} 0 --target raspberrypi4\n" in unit.read_text()
    wrong = run(app, ["serve-unit", "--user", "nobody", "--command", "stream", "--out", str(unit), "--", str(model), "0",
                      "--queue-size", "4"])
    assert wrong.exit_code == 2 and "the stream arguments do not parse" in wrong.output
