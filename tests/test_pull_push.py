"""`edgecls pull` and `edgecls push` (issue 26 items 3 and 5) against real `edgecls serve`
processes on 127.0.0.1: incremental, checksummed, resumable pulls that never overwrite, and
rollouts that stop at the first refusal and roll back what they updated."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loop_util import CuttingProxy, coral_pair, imagenet_photos, make_video
from serve_util import ROOT, TOKEN, Server


def cli(*args, token: str | None = TOKEN, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("EDGECLS_TOKEN", None)
    if token:
        env["EDGECLS_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "edgecls.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def device(tmp_path_factory, assets):
    tmp = tmp_path_factory.mktemp("device")
    server = Server(make_video(tmp / "clip.avi", imagenet_photos(assets)), "--collect", tmp / "photos",
                    "--state-dir", tmp / "state")
    try:
        server.wait_ready(True)
        for label, count in (("cat", 3), ("dog", 2)):
            status, doc = server.json("POST", "/api/collect", {"class": label, "count": count, "interval": 0.15})
            assert status == 200 and len(doc["saved"]) == count, doc
        yield server, tmp / "photos"
    finally:
        server.stop()


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def photos_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.glob("*/*") if p.suffix == ".jpg"}


def test_pull_is_incremental_checksummed_and_never_overwrites(device, tmp_path):
    server, collection = device
    out = tmp_path / "dataset"
    on_device = photos_in(collection)
    taken = sorted(on_device)[0]
    (out / taken).parent.mkdir(parents=True)
    (out / taken).write_bytes(b"a photo of mine")   # the same name, other content: must survive
    first = cli("pull", url(server), "--out", out)
    assert first.returncode == 0, first.stderr
    assert "5 new photo(s)" in first.stdout
    here = photos_in(out)
    assert (out / taken).read_bytes() == b"a photo of mine"
    assert sorted(here.values()) == sorted([*on_device.values(), b"a photo of mine"])
    side = json.loads(next((out / "dog").glob("*.jpg.json")).read_text())
    assert side["why"] == "collected" and side["device_id"] and side["sha256"] and side["time"] and side["seq"] >= 1
    from edgecls.data import scan

    assert scan(out).classes == ["cat", "dog"]   # `edgecls train` reads it as it is
    again = cli("pull", url(server), "--out", out)
    assert again.returncode == 0 and "0 new photo(s)" in again.stdout, again.stdout
    server.json("POST", "/api/collect", {"class": "dog"})
    items = server.json("GET", "/api/label?kind=collected&limit=200")[1]["items"]
    cat = next(i["id"] for i in items if i["class"] == "cat")
    assert server.json("POST", "/api/label", {"ids": [cat], "class": "dog"})[0] == 200  # relabelled on the device
    third = cli("pull", url(server), "--out", out)
    assert third.returncode == 0 and "1 new photo(s)" in third.stdout and "1 moved" in third.stdout, third.stdout
    assert len(list((out / "dog").glob("*.jpg"))) == 4 and len(photos_in(out)) == 7


def test_pull_resumes_after_a_dropped_connection(device, tmp_path):
    """A proxy cuts the first photo transfer after 20 kB: the pull retries with a Range request from
    where the part file ends, and every photo arrives whole (checked by SHA-256)."""
    server, collection = device
    proxy = CuttingProxy(server.port, b"/api/photos/", after=20000)
    try:
        result = cli("pull", f"http://127.0.0.1:{proxy.port}", "--out", tmp_path / "d")
    finally:
        proxy.close()
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout and "retrying" in result.stderr, (result.stdout, result.stderr)
    assert any(b"Range: bytes=" in r or b"range: bytes=" in r for r in proxy.requests)
    assert sorted(photos_in(tmp_path / "d").values()) == sorted(photos_in(collection).values())
    assert not list((tmp_path / "d" / ".edgecls-pull" / "partial").iterdir())  # no part file left


def test_pull_says_what_is_wrong(device, tmp_path):
    server, _ = device
    for args, token, expected in (((url(server),), "wrong-token-0123456789", "refused the token"),
                                  (("http://127.0.0.1:9",), TOKEN, "cannot reach"),
                                  (("ftp://x",), TOKEN, "not a device URL")):
        result = cli("pull", *args, "--out", tmp_path / "o", "--retries", "0", token=token)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def pair(tmp_path_factory, coral, assets):
    return coral_pair(coral, assets, tmp_path_factory.mktemp("pair"))


def disagreeing_photos(v1: Path, v2: Path, assets: Path, out: Path) -> Path:
    """Real photos on which the two models give different top-1 answers: a device with these as its
    own --check-images and --min-agreement 1 refuses the other model."""
    from edgecls.preprocess import read_rgb
    from edgecls.runtime import Classifier

    a, b = Classifier.from_artifact(v1), Classifier.from_artifact(v2)
    out.mkdir()
    photos = imagenet_photos(assets) + sorted((assets / "images/labeled-photos").glob("*.jpg"))
    for photo in photos:
        rgb = read_rgb(photo)
        if a.predict(rgb, 1)[0][0] != b.predict(rgb, 1)[0][0]:
            (out / photo.name).write_bytes(photo.read_bytes())
    assert list(out.iterdir()), "the two models agree on every photo"
    return out


def start(model: Path, tmp: Path, name: str, *extra) -> Server:
    return Server(model, "--state-dir", tmp / name, "--name", "m", *extra)


def serving_sha(server: Server) -> str:
    return server.json("GET", "/api/status")[1]["model"]["sha256"]


def test_a_refusal_stops_the_rollout_and_rolls_back(pair, assets, tmp_path):
    v1, v2 = pair
    strict = disagreeing_photos(v1, v2, assets, tmp_path / "strict")
    servers = [start(v1, tmp_path, "a"), start(v1, tmp_path, "b"),
               start(v1, tmp_path, "c", "--check-images", strict, "--min-agreement", "1.0")]
    try:
        devices = tmp_path / "devices.txt"
        devices.write_text("# the fleet\n" + "".join(url(s) + "\n" for s in servers[1:]))
        result = cli("push", v2, url(servers[0]), "--devices", devices, "--wave", "1")
        assert result.returncode == 1, result.stdout + result.stderr
        lines = [line for line in result.stdout.splitlines() if "127.0.0.1" in line]
        assert [("rolled back" in line, "refused" in line) for line in lines] == [(True, False), (True, False),
                                                                                 (False, True)], result.stdout + result.stderr
        assert "422" in result.stderr
        v1_sha = json.loads(Path(str(v1) + ".json").read_text())["artifact_sha256"]
        assert [serving_sha(s) for s in servers] == [v1_sha] * 3
    finally:
        for s in servers:
            s.stop()


def test_a_bad_artifact_stops_at_the_canary_and_a_good_one_reaches_all(pair, tmp_path):
    """A check image whose recorded answer is wrong: the canary refuses it, no other device is
    touched (exit 1). The real artifact then reaches every device (exit 0); again: already current."""
    import shutil

    v1, v2 = pair
    bad = tmp_path / "bad"
    shutil.copytree(v2.parent, bad)
    doc = json.loads((bad / (v2.name + ".json")).read_text())
    doc["checks"][0]["top1"] = "toaster" if doc["checks"][0]["top1"] != "toaster" else "macaw"
    (bad / (v2.name + ".json")).write_text(json.dumps(doc))
    servers = [start(v1, tmp_path, n) for n in "abc"]
    try:
        urls = [url(s) for s in servers]
        before = [serving_sha(s) for s in servers]
        result = cli("push", bad / v2.name, *urls)
        assert result.returncode == 1, result.stdout + result.stderr
        assert [serving_sha(s) for s in servers] == before
        assert result.stdout.count("not tried") == 2 and "rolled back" not in result.stdout
        good = cli("push", v2, *urls, "--wave", "2")
        assert good.returncode == 0 and good.stdout.count("updated") == 3, good.stdout + good.stderr
        assert {serving_sha(s) for s in servers} == {doc["artifact_sha256"]}
        again = cli("push", v2, *urls)
        assert again.returncode == 0 and again.stdout.count("already current") == 3
        wrong = cli("push", v2, *urls, token="wrong-token-0123456789")
        assert wrong.returncode == 1 and "token" in wrong.stderr
        gone = cli("push", v1, "http://127.0.0.1:9", *urls)   # the canary cannot be reached
        assert gone.returncode == 1 and "unreachable" in gone.stdout and gone.stdout.count("not tried") == 3
        assert {serving_sha(s) for s in servers} == {doc["artifact_sha256"]}
    finally:
        for s in servers:
            s.stop()


def test_push_refuses_bad_input_before_touching_a_device(pair, tmp_path):
    v1, _ = pair
    devices = tmp_path / "devices.txt"
    devices.write_text("not a url\n")
    for args, expected in (((v1, "--devices", devices), "not a device URL"),
                           ((v1,), "no device"),
                           ((tmp_path / "missing.tflite", "http://127.0.0.1:9"), "model file not found"),
                           ((v1, "http://127.0.0.1:9", "http://127.0.0.1:9/"), "more than once")):
        result = cli("push", *args)
        assert result.returncode == 2 and expected in result.stderr, (args, result.stderr)
