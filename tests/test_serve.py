"""`edgecls serve` as a real process on 127.0.0.1: health, metadata, KServe v2 inference on a
tensor and on image bytes, /classify, Prometheus metrics, the token, bad input, a model swap
under load, readiness that follows the source, frames to learn from, SIGTERM, the live page in
headless Chromium, and the systemd unit."""
from __future__ import annotations

import asyncio
import base64
import json
import shutil
import signal
import socket
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from serve_util import TOKEN, Server, coral_manifest, multipart, onnx_manifest

PHOTOS = ["parrot.jpg", "cat.bmp", "grace_hopper.bmp", "hot_dog.jpg", "bird.bmp", "dragonfly.bmp"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, assets, coral):
    """The Coral MobileNetV2 with a manifest, streaming a folder of the six ImageNet photos at 8 fps."""
    tmp = tmp_path_factory.mktemp("serve")
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp / "model")
    photos, watched = tmp / "photos", tmp / "watched"
    photos.mkdir()
    watched.mkdir()
    for name in PHOTOS:
        shutil.copyfile(assets / "images/imagenet-photos" / name, photos / name)
    server = Server(model, photos, "--fps", "8", "--state-dir", tmp / "state", "--read-timeout", "1",
                    "--stale-after", "1.5", "--max-upload-mb", "8", "--queue-size", "6", "--learn", tmp / "learn", "--learn-margin", "1.0",
                    "--learn-per-minute", "30", "--learn-max-mb", "0.25", "--watch", watched)
    try:
        server.wait_ready(True)
        yield SimpleNamespace(server=server, model=model, photos=photos, learn=tmp / "learn", labels=labels, tmp=tmp,
                              watched=watched)
    finally:
        server.stop()


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


def photo_bytes(served) -> bytes:
    return (served.photos / "parrot.jpg").read_bytes()


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


async def _load(port: int, body: bytes, stop: asyncio.Event, results: list, workers: int = 4, cap: int = 600) -> None:
    """Bounded load: `workers` clients posting /classify until `stop` or `cap` requests in all."""
    import aiohttp

    async def client(session):
        while not stop.is_set() and len(results) < cap:
            async with session.post(f"http://127.0.0.1:{port}/classify", data=body,
                                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"}) as r:
                out = await r.json()
                results.append((r.status, out.get("model", {}).get("version"), out.get("top_k", [[None]])[0][0]))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(workers)))


def test_a_burst_beyond_the_queue_is_answered_503_with_retry_after(served):
    import aiohttp

    async def burst():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            async def one():
                async with session.post(f"http://127.0.0.1:{served.server.port}/classify", data=photo_bytes(served),
                                        headers={"Content-Type": "image/jpeg"}) as r:
                    return r.status, r.headers.get("Retry-After"), await r.json()
            return await asyncio.gather(*(one() for _ in range(30)))

    answers = asyncio.run(burst())
    busy = [a for a in answers if a[0] == 503]
    assert busy and all(int(retry) >= 1 and "busy" in out["error"] for _, retry, out in busy)
    assert all(status == 200 for status, _, _ in answers if status != 503)
    assert len(answers) - len(busy) >= 6  # the admitted ones were answered
    assert served.server.json("POST", "/classify", photo_bytes(served), headers={"Content-Type": "image/jpeg"})[0] == 200


async def _upload(port: int, artifact: Path, manifest: bytes | None = None, data: bytes | None = None):
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("artifact", data if data is not None else artifact.read_bytes(), filename="whatever/../../x")
    form.add_field("manifest", manifest if manifest is not None else artifact.with_name(artifact.name + ".json").read_bytes(),
                   filename="m.json")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.put(f"http://127.0.0.1:{port}/v2/models/model/artifact", data=form) as r:
            return r.status, await r.json()


async def _rollback(port: int):
    import aiohttp

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.post(f"http://127.0.0.1:{port}/v2/models/model/rollback") as r:
            return r.status, await r.json()


def test_model_swap_under_load_loses_no_request(served, coral, assets):
    s, port = served.server, served.server.port
    work = served.tmp / "updates"
    good = onnx_manifest(assets / "models/onnx/mobilenetv2-12-int8.onnx", served.labels, work / "good")
    doc = json.loads(served.model.with_name("model.tflite.json").read_text())
    mislabelled = json.dumps({**doc, "labels": doc["labels"][::-1]}).encode()
    corrupt = b"TFL3" + bytes(range(256)) * 40
    corrupt_doc = json.dumps({**doc, "artifact_sha256": __import__("hashlib").sha256(corrupt).hexdigest()}).encode()
    wrong_sum = json.dumps({**doc, "artifact_sha256": "0" * 64}).encode()

    async def scenario():
        stop, results = asyncio.Event(), []
        load = asyncio.create_task(_load(port, photo_bytes(served), stop, results))
        outcomes = {"checksum": await _upload(port, served.model, wrong_sum),
                    "corrupt": await _upload(port, served.model, corrupt_doc, corrupt),
                    "mislabelled": await _upload(port, served.model, mislabelled),
                    "good": await _upload(port, good)}
        swapped_at = len(results)
        while len(results) < swapped_at + 20:
            await asyncio.sleep(0.05)
        outcomes["rollback"] = await _rollback(port)
        rolled_at = len(results)
        while len(results) < rolled_at + 12:
            await asyncio.sleep(0.05)
        stop.set()
        await load
        return outcomes, results, swapped_at, rolled_at

    outcomes, results, swapped_at, rolled_at = asyncio.run(scenario())
    for bad, words in (("checksum", "checksum"), ("corrupt", "does not open"), ("mislabelled", "agree")):
        status, out = outcomes[bad]
        assert status == 422 and words in out["error"] and out["model"]["version"] == "1", (bad, out)
    status, out = outcomes["good"]
    assert status == 200 and out["model"]["version"] == "2" and out["model"]["format"] == "onnx", out
    assert out["checks"]["agreement"] >= 0.5 and out["checks"]["compared"] >= 2  # recent frames, one a second
    assert outcomes["rollback"][0] == 200 and outcomes["rollback"][1]["model"]["version"] == "1"
    assert len(results) <= 600
    assert all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:5]
    assert all(top == "macaw" for _, _, top in results)  # both models know the parrot
    versions = [v for _, v, _ in results]
    assert set(versions) == {"1", "2"} and versions[swapped_at + 4 : rolled_at].count("2") > 0
    assert set(versions[rolled_at + 4 :]) == {"1"}
    # Uploads are stored under the server's names; the refused ones left nothing behind.
    stored = sorted(p.name for p in (served.tmp / "state/models").rglob("*") if p.is_file())
    assert stored == ["model.onnx", "model.onnx.json"]


def test_a_model_dropped_into_the_watched_folder_is_checked_and_served(served):
    """A copy still in progress (not matching its manifest's checksum) is left alone; complete, it is
    checked and swapped in like an upload."""
    good = served.tmp / "updates/good/zoo.onnx"
    target = served.watched / "zoo.onnx"
    shutil.copyfile(good.with_name("zoo.onnx.json"), served.watched / "zoo.onnx.json")
    data = good.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    time.sleep(2.5)  # one pass of the watch (every 2 s) over the half-written file
    assert served.server.json("GET", "/v2/models/model")[1]["versions"] == ["1"]
    target.write_bytes(data)
    deadline = time.time() + 20
    while served.server.json("GET", "/v2/models/model")[1]["versions"] == ["1"]:
        assert time.time() < deadline, "".join(served.server.log[-10:])
        time.sleep(0.2)
    meta = served.server.json("GET", "/v2/models/model")[1]
    assert meta["versions"] == ["3"] and meta["parameters"]["edgecls"]["origin"] == "watch"
    poll(lambda: any("--watch: zoo.onnx accepted as model v3" in line for line in served.server.log), 5)


def test_readiness_follows_the_source(served):
    s = served.server
    away = served.tmp / "away"
    served.photos.rename(away)
    try:
        s.wait_ready(False, timeout=15)
        status, out = s.json("GET", "/v2/health/ready", auth=False)
        assert status == 503 and any("no frame" in r for r in out["reasons"])
    finally:
        away.rename(served.photos)
    assert s.wait_ready(True, timeout=20) < 20


def test_uncertain_frames_kept_for_training(served):
    """--learn-margin 1.0 keeps every frame (up to the caps): an image folder `edgecls train` reads,
    its sidecar listing exactly the files on disk, the oldest evicted under --learn-max-mb 0.25."""
    from edgecls.data import scan

    files = sorted(p.relative_to(served.learn).as_posix() for p in served.learn.glob("*/*.jpg"))
    lines = [json.loads(line) for line in (served.learn / "predictions.jsonl").read_text().splitlines()]
    assert files and sorted(r["file"] for r in lines) == files
    assert sum((served.learn / f).stat().st_size for f in files) <= 0.25 * (1 << 20)
    assert all(r["margin"] < 1.0 and r["model"]["version"] in ("1", "2", "3") and r["top_k"] for r in lines)
    assert all(Path(r["file"]).parent.name.replace("_", "") for r in lines)
    names = {Path(f).parent.name for f in files}
    if len(names) >= 2:  # a training set needs two classes; the photos give several
        assert set(scan(served.learn).classes) == names


def engine_jobs_and_frames(server: Server) -> tuple[float, float]:
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(server.request("GET", "/metrics")[2].decode())}
    jobs = next(x.value for x in families["edgecls_inference_seconds"].samples if x.name.endswith("_count"))
    frames = next(x.value for x in families["edgecls_stream_frames"].samples if x.labels["state"] == "processed")
    return jobs, frames


def test_viewers_share_one_inference_per_frame(served):
    """Four viewers (two per transport) watching: still one engine job per classified frame, and
    each viewer receives frames."""
    import aiohttp

    async def watch():
        received = [0] * 4
        stop = asyncio.Event()

        async def ws_viewer(i, session):
            async with session.ws_connect(f"http://127.0.0.1:{served.server.port}/ws") as ws:
                while not stop.is_set():
                    if (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.BINARY:
                        received[i] += 1

        async def mjpeg_viewer(i, session):
            async with session.get(f"http://127.0.0.1:{served.server.port}/stream.mjpg") as r:
                while not stop.is_set():
                    received[i] += (await r.content.read(1 << 16)).count(b"Content-Type: image/jpeg")

        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            tasks = [asyncio.create_task(ws_viewer(0, session)), asyncio.create_task(ws_viewer(1, session)),
                     asyncio.create_task(mjpeg_viewer(2, session)), asyncio.create_task(mjpeg_viewer(3, session))]
            await asyncio.sleep(0.5)
            before = engine_jobs_and_frames(served.server)
            await asyncio.sleep(2.0)
            after = engine_jobs_and_frames(served.server)
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        return received, after[0] - before[0], after[1] - before[1]

    received, jobs, frames = asyncio.run(watch())
    assert all(n >= 2 for n in received), received
    assert frames >= 4 and jobs <= frames + 2  # +2: a frame whose job and result straddle a scrape


def poll(condition, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.1)


def test_live_page_in_headless_chromium(served, tmp_path):
    """The page shows the stream with labels that change as frames arrive (WebSocket), and the
    MJPEG variant shows frames too."""
    from playwright.sync_api import sync_playwright

    chromium = Path("/usr/bin/chromium")
    assert chromium.exists(), "Debian's chromium is needed for this test: apt-get install chromium (make test does)"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(tmp_path / "profile", executable_path=str(chromium),
                                                        args=flags, viewport={"width": 1100, "height": 640})
        try:
            page = browser.new_page()
            # Waits through locators and polling: the page's Content-Security-Policy forbids the
            # string evaluation that wait_for_function would need, as it should.
            page.goto(f"http://127.0.0.1:{served.server.port}/#token={TOKEN}")
            page.wait_for_selector("#labels .row", timeout=15000)
            poll(lambda: page.locator("#frame").evaluate("img => img.naturalWidth") > 0)
            first = page.inner_text("#frame-index")
            poll(lambda: page.inner_text("#frame-index") != first)  # the stream updates
            top = page.inner_text("#labels .top .name")
            assert top in {"macaw", "Egyptian cat", "military uniform", "hotdog, hot dog, red hot", "chickadee",
                           "dragonfly, darning needle, devil's darning needle, sewing needle, snake feeder, "
                           "snake doctor, mosquito hawk, skeeter hawk"}, top
            poll(lambda: page.inner_text("#state") == "ready")
            assert page.inner_text("#fps") not in ("", "–") and "ms" in page.inner_text("#latency")
            page.screenshot(path=str(tmp_path / "page.png"))
            assert (tmp_path / "page.png").stat().st_size > 20_000
            page.goto(f"http://127.0.0.1:{served.server.port}/?transport=mjpeg#token={TOKEN}")
            page.wait_for_selector("#labels .row", timeout=15000)
            poll(lambda: page.locator("#frame").evaluate("img => img.naturalWidth") > 0)
            assert page.inner_text("#transport") == "mjpeg"
        finally:
            browser.close()


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
    made = run(app, ["serve-unit", "--out", str(unit), "--", str(model), "0", "--host", "0.0.0.0",
                     "--token-file", str(token)])
    assert made.exit_code == 0, made.output
    text = unit.read_text()
    assert "Restart=on-failure" in text and "KillSignal=SIGTERM" in text and "StateDirectory=edgecls" in text
    assert f"-m edgecls.cli serve {model} 0 --host 0.0.0.0 --token-file {token} --state-dir /var/lib/edgecls" in text
    import subprocess

    verified = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr  # systemd's own reading of the unit
    leaked = run(app, ["serve-unit", "--out", str(unit), "--", str(model), "--token", TOKEN])
    assert leaked.exit_code == 2 and "--token-file" in leaked.output
    typo = run(app, ["serve-unit", "--out", str(unit), "--", str(model), "--prot", "80"])
    assert typo.exit_code == 2 and "do not parse" in typo.output


def test_a_restart_serves_the_last_accepted_update(coral, assets, tmp_path):
    """After a restart the accepted upload serves again — while the command line names the same
    artifact as when it was accepted; --no-resume serves the command line's."""
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    good = onnx_manifest(assets / "models/onnx/mobilenetv2-12-int8.onnx", labels, tmp_path / "good")
    args = (model, "--state-dir", tmp_path / "state", "--min-agreement", "0")
    first = Server(*args)
    try:
        assert asyncio.run(_upload(first.port, good))[0] == 200
    finally:
        assert first.stop() == 0
    second = Server(*args)
    try:
        meta = second.json("GET", "/v2/models/model")[1]
        assert meta["versions"] == ["2"] and meta["parameters"]["edgecls"]["origin"] == "resumed"
        assert meta["platform"] == "onnxruntime_onnx"
    finally:
        second.stop()
    third = Server(*args, "--no-resume")
    try:
        assert third.json("GET", "/v2/models/model")[1]["parameters"]["edgecls"]["file"] == "model.tflite"
    finally:
        third.stop()
