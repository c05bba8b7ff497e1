"""`edgecls serve` with a stream, as a real process on 127.0.0.1: a model swap under load, the
watched folder, viewers that share one inference, the live page in headless Chromium, frames kept
to learn from, readiness that follows the source, and a restart that resumes an update."""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

from serve_util import TOKEN, Server, coral_manifest, onnx_manifest, photo_bytes, poll, serving


@pytest.fixture(scope="module")
def served(tmp_path_factory, assets, coral):
    with serving(tmp_path_factory, assets, coral) as served:
        yield served


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


async def _load(port: int, body: bytes, stop: asyncio.Event, results: list, workers: int = 4, cap: int = 600) -> None:
    """Bounded load: `workers` clients posting /classify until `stop` or `cap` requests in all."""
    import aiohttp

    async def client(session):
        while not stop.is_set() and len(results) < cap:
            sent = time.monotonic()
            async with session.post(f"http://127.0.0.1:{port}/classify", data=body,
                                    headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/jpeg"}) as r:
                out = await r.json()
                results.append((r.status, out.get("model", {}).get("version"), out.get("top_k", [[None]])[0][0], sent))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(workers)))


async def _upload(port: int, artifact: Path, manifest: bytes | None = None, data: bytes | None = None,
                  checks: tuple[tuple[str, bytes], ...] = ()):
    import aiohttp

    form = aiohttp.FormData()
    for name, image in checks:
        form.add_field("check", image, filename=name)
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
        rolled_at, rolled_time = len(results), time.monotonic()
        while len(results) < rolled_at + 12:
            await asyncio.sleep(0.05)
        stop.set()
        await load
        return outcomes, results, swapped_at, rolled_at, rolled_time

    outcomes, results, swapped_at, rolled_at, rolled_time = asyncio.run(scenario())
    for bad, words in (("checksum", "checksum"), ("corrupt", "does not open"), ("mislabelled", "agree")):
        status, out = outcomes[bad]
        assert status == 422 and words in out["error"] and out["model"]["version"] == "1", (bad, out)
    status, out = outcomes["good"]
    assert status == 200 and out["model"]["version"] == "2" and out["model"]["format"] == "onnx", out
    assert out["checks"]["stored"].startswith("none")  # an upload brings no check images
    assert out["checks"]["agreement"] >= 0.5 and out["checks"]["compared"] >= 1  # recent frames: one reference a second is kept, so a fast run has few
    assert outcomes["rollback"][0] == 200 and outcomes["rollback"][1]["model"]["version"] == "1"
    assert len(results) <= 600
    assert all(status == 200 for status, *_ in results), [r for r in results if r[0] != 200][:5]
    assert all(top == "macaw" for _, _, top, _ in results)  # both models know the parrot
    versions = [v for _, v, _, _ in results]
    assert set(versions) == {"1", "2"} and versions[swapped_at + 4 : rolled_at].count("2") > 0
    # Every request sent after the rollback answered is served by v1 (by send time, not by position in the
    # list: under load, answers to requests sent before the rollback may arrive after it).
    after = [v for _, v, _, sent in results if sent > rolled_time]
    assert after and set(after) == {"1"}, after
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
    # The same content as the swap test's upload (v2, rolled back since): that model again, under its
    # version and from its kept copy, not a v3.
    meta = served.server.json("GET", "/v2/models/model")[1]
    assert meta["versions"] == ["2"] and meta["parameters"]["edgecls"]["origin"] == "watch"
    poll(lambda: any("--watch: zoo.onnx accepted as model v2" in line for line in served.server.log), 5)


def test_uncertain_frames_kept_for_training(served):
    """--learn-margin 1.0 keeps every frame (up to the caps): an image folder `edgecls train` reads,
    its sidecar listing exactly the files on disk, the oldest evicted under --learn-max-mb 0.25."""
    from edgecls.data import scan

    files = sorted(p.relative_to(served.learn).as_posix() for p in served.learn.glob("*/*.jpg"))
    lines = [json.loads(line) for line in (served.learn / "predictions.jsonl").read_text().splitlines()]
    assert files and sorted(r["file"] for r in lines) == files
    assert sum((served.learn / f).stat().st_size for f in files) <= 0.25 * (1 << 20)
    assert all(r["margin"] < 1.0 and r["model"]["version"] in ("1", "2") and r["top_k"] for r in lines)
    assert all(Path(r["file"]).parent.name.replace("_", "") for r in lines)
    names = {Path(f).parent.name for f in files}
    if len(names) >= 2:  # a training set needs two classes; the photos give several
        assert set(scan(served.learn).classes) == names


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


def _with_check_images(served, coral, assets, name: str, interpolation: str = "area") -> Path:
    """The Coral model with check images and their manifest entries, as `edgecls export` stores them
    (write_checks is the export's own code), in a folder of its own. Another `interpolation` makes it
    another model by content (the server keeps one version per content)."""
    from dataclasses import replace

    from edgecls.check_images import write_checks
    from edgecls.manifest import load_manifest
    from edgecls.preprocess import read_rgb
    from edgecls.runtime import Classifier

    artifact = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", served.labels,
                              served.tmp / "exports" / name, name)
    manifest = load_manifest(artifact)
    manifest.preprocessing = replace(manifest.preprocessing, interpolation=interpolation)
    manifest.save(artifact)
    clf = Classifier.from_artifact(artifact)
    pictures = [read_rgb(assets / "images/imagenet-photos" / p) for p in ("parrot.jpg", "bird.bmp", "hot_dog.jpg")]
    entries, _ = write_checks(artifact, clf, pictures, select=False)
    manifest = load_manifest(artifact)
    manifest.checks = entries
    manifest.save(artifact)
    return artifact


def _drop(artifact: Path, watched: Path) -> None:
    """Into the watched folder: check images first, the manifest last (as `cp -r` of an export does)."""
    shutil.copytree(artifact.with_name(artifact.name + ".checks"), watched / (artifact.name + ".checks"))
    shutil.copyfile(artifact, watched / artifact.name)
    shutil.copyfile(artifact.with_name(artifact.name + ".json"), watched / (artifact.name + ".json"))


def _wait_log(served, text: str, timeout: float = 20.0) -> str:
    poll(lambda: any(text in line for line in served.server.log), timeout)
    return next(line for line in served.server.log if text in line)


def test_a_watched_update_runs_its_stored_check_images(served, coral, assets):
    before = served.server.json("GET", "/v2/models/model")[1]["versions"][0]
    artifact = _with_check_images(served, coral, assets, "checked.tflite")
    _drop(artifact, served.watched)
    line = _wait_log(served, "--watch: checked.tflite accepted")
    assert "(stored check images: 3/3 answered as at export)" in line, line
    meta = served.server.json("GET", "/v2/models/model")[1]
    assert meta["versions"] == [str(int(before) + 1)] and meta["parameters"]["edgecls"]["origin"] == "watch"
    stored = sorted(p.name for p in (served.tmp / "state/models").glob("v*/model.tflite.checks/*"))
    assert stored == ["0.png", "1.png", "2.png"]
    # An upload brings them as "check" parts named as the manifest lists them.
    uploaded = _with_check_images(served, coral, assets, "uploaded.tflite", "linear")
    images = sorted(uploaded.with_name("uploaded.tflite.checks").iterdir())
    checks = tuple((p.name, p.read_bytes()) for p in images)
    status, out = asyncio.run(_upload(served.server.port, uploaded, checks=checks[:1] + (("9.png", b"x"),)))
    assert status == 400 and "9.png" in out["error"], out
    status, out = asyncio.run(_upload(served.server.port, uploaded, checks=checks))
    assert status == 200 and out["checks"]["stored"] == "3/3 answered as at export", out
    status, out = asyncio.run(_upload(served.server.port, uploaded, checks=checks))  # the same again: nothing new
    assert status == 200 and out["swapped"] is False and "already serving" in out["note"], out
    bare = _with_check_images(served, coral, assets, "bare.tflite", "cubic")
    status, out = asyncio.run(_upload(served.server.port, bare))  # without them: not refused, said so
    assert status == 200 and out["checks"]["stored"].startswith("not available: the manifest lists 3"), out
    assert "checked instead against the current model on" in out["checks"]["stored"], out


def test_a_watched_update_whose_check_image_answers_differently_is_refused(served, coral, assets):
    """Only the expected answer differs (checksums all match): refused, the image named, the model
    before keeps serving, nothing of the update left in the state folder."""
    models = served.tmp / "state/models"
    before = served.server.json("GET", "/v2/models/model")[1]["versions"]
    kept = sorted(p.relative_to(models) for p in models.rglob("*"))
    artifact = _with_check_images(served, coral, assets, "relabelled.tflite")
    doc = json.loads(artifact.with_name("relabelled.tflite.json").read_text())
    assert doc["checks"][1]["top1"] == "chickadee"
    doc["checks"][1]["top1"] = "toucan"
    artifact.with_name("relabelled.tflite.json").write_text(json.dumps(doc))
    _drop(artifact, served.watched)
    line = _wait_log(served, "--watch: relabelled.tflite refused")
    assert "relabelled.tflite.checks/1.png: expected toucan, got chickadee" in line, line
    assert served.server.json("GET", "/v2/models/model")[1]["versions"] == before
    assert sorted(p.relative_to(models) for p in models.rglob("*")) == kept


def test_a_restart_serves_the_last_accepted_update(coral, assets, tmp_path):
    """After a restart the accepted upload serves again — while the command line names the same
    artifact as when it was accepted; --no-resume serves the command line's."""
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    good = onnx_manifest(assets / "models/onnx/mobilenetv2-12-int8.onnx", labels, tmp_path / "good")
    args = (model, "--state-dir", tmp_path / "state", "--min-agreement", "0")
    first = Server(*args)
    try:
        # A picture seen first: with nothing to compare it with, an update without check images is refused.
        assert first.json("POST", "/classify", (assets / "images/imagenet-photos/parrot.jpg").read_bytes(),
                          headers={"Content-Type": "image/jpeg"})[0] == 200
        time.sleep(0.3)
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
