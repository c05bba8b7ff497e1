"""Collect mode and the label page of `edgecls serve` (issue 26 items 1-2), as real processes on
127.0.0.1: frames saved at full resolution, bursts, undo, class names that never reach the file
system unchecked, the disk cap, the token on every new route, and a label list that stays fast
with thousands of kept frames."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from serve_util import Server, coral_manifest, multipart

BAD_NAMES = ["../escape", "a/b", "..", ".hidden", "nul\x00byte", "tab\tname", "x" * 65, "back\\slash", ""]


def video(path: Path, assets: Path, size=(800, 600), fps: float = 10.0, repeat: int = 4) -> Path:
    """A video of the six ImageNet photos (OpenCV's VideoWriter), each shown `repeat` frames."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for photo in sorted((assets / "images/imagenet-photos").iterdir()):
        image = cv2.imread(str(photo))
        if image is not None:
            for _ in range(repeat):
                writer.write(cv2.resize(image, size))
    writer.release()
    return path


@pytest.fixture(scope="module")
def collecting(tmp_path_factory, assets):
    """serve --collect DIR VIDEO without a model, with a token, frames 800x600, viewers get 320."""
    tmp = tmp_path_factory.mktemp("collect")
    server = Server(video(tmp / "clip.avi", assets), "--collect", tmp / "photos", "--view-width", "320",
                    "--state-dir", tmp / "state", "--collect-max-mb", "1")
    try:
        server.wait_ready(True)
        yield server, tmp / "photos"
    finally:
        server.stop()


def post(server: Server, path: str, doc) -> tuple[int, dict]:
    return server.json("POST", path, doc)


def files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".edgecls" not in p.parts)


def test_a_frame_is_saved_at_full_resolution_and_undone(collecting):
    from edgecls.preprocess import read_rgb

    server, photos = collecting
    status, doc = post(server, "/api/collect", {"class": "cat"})
    assert status == 200, doc
    (saved,) = doc["saved"]
    assert read_rgb(photos / saved).shape == (600, 800, 3)  # the camera's frame, not the 320 px preview
    assert doc["classes"]["cat"] >= 1
    status, doc = post(server, "/api/collect", {"class": "dog", "count": 4, "interval": 0.15})
    assert status == 200, doc
    assert len(doc["saved"]) == len(set(doc["saved"])) == 4 and doc["classes"]["dog"] == 4
    status, undone = post(server, "/api/collect/undo", {})
    assert status == 200 and sorted(undone["removed"]) == sorted(doc["saved"])  # the whole burst
    assert "dog" not in undone["classes"] and not (photos / "dog").exists()  # no empty class folder left
    assert (photos / saved).is_file()


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_class_name_that_is_not_one_folder_name_is_refused(collecting, name):
    server, photos = collecting
    before = files(photos)
    status, doc = post(server, "/api/collect", {"class": name})
    assert status == 400 and "class" in doc["error"], doc
    assert files(photos) == before
    assert not (photos.parent / "escape").exists()


def test_bad_bodies_get_a_reason(collecting):
    server, _ = collecting
    for body, why in (({"class": "cat", "count": 1000}, "count"), ({"class": "cat", "interval": "fast"}, "interval"),
                      ({"class": 5}, "class"), ([1, 2], "object")):
        status, doc = post(server, "/api/collect", body)
        assert status == 400 and why in doc["error"], (body, doc)
    status, _, data = server.request("POST", "/api/collect", b"{" * 70000, headers={"Content-Type": "application/json"})
    assert status == 413


def test_without_a_model_the_model_routes_say_why(collecting, assets):
    server, _ = collecting
    photo = (assets / "images/imagenet-photos/parrot.jpg").read_bytes()
    status, doc = server.json("POST", "/classify", photo)
    assert status == 409 and "no model" in doc["error"]
    body, ctype = multipart({"artifact": ("m.tflite", b"x", "application/octet-stream")})
    status, _, data = server.request("PUT", "/v2/models/collect/artifact", body, headers={"Content-Type": ctype})
    assert status == 409 and b"no model" in data
    status, doc = server.json("GET", "/api/status")
    assert status == 200 and doc["model"]["collect_only"] is True


def test_every_new_route_needs_the_token(collecting):
    server, _ = collecting
    for method, path in (("GET", "/api/collect"), ("POST", "/api/collect"), ("POST", "/api/collect/undo"),
                         ("GET", "/api/label"), ("POST", "/api/label"), ("GET", "/api/label/image?id=x"),
                         ("GET", "/api/photos"), ("GET", "/api/photos/1")):
        status, _, _ = server.request(method, path, b"{}", auth=False)
        assert status == 401, (method, path)
    status, headers, _ = server.request("GET", "/?view=label", auth=False)  # the page itself: the token is in its URL fragment
    assert status == 200 and headers["Content-Type"].startswith("text/html")


def test_a_full_collection_refuses_new_photos_and_says_so(collecting):
    """--collect-max-mb 1: a burst stops when the cap is reached, the next save is refused; nothing
    already collected is evicted (these photos carry labels)."""
    server, photos = collecting
    status, doc = post(server, "/api/collect", {"class": "fill", "count": 30, "interval": 0.1})
    assert status == 200 and "--collect-max-mb" in doc["stopped"], doc
    kept = files(photos)
    assert doc["bytes"] <= 1 << 20
    status, doc = post(server, "/api/collect", {"class": "fill"})
    assert status == 503 and "--collect-max-mb" in doc["error"]
    assert files(photos) == kept
    post(server, "/api/label", {})  # (a malformed label request changes nothing either)
    assert files(photos) == kept
    for _ in range(40):  # make room again for the other tests of this module
        if post(server, "/api/collect/undo", {})[0] != 200:
            break


def write_kept_frames(learn: Path, count: int) -> list[str]:
    """`count` kept frames (small real JPEGs) in 3 predicted-class folders with predictions.jsonl, oldest first."""
    import cv2

    image = cv2.resize(cv2.imread(str(Path(os.environ.get("EDGECLS_ASSETS", "../shared")) /
                                      "images/imagenet-photos/parrot.jpg")), (48, 36))
    data = cv2.imencode(".jpg", image)[1].tobytes()
    lines, names, start = [], [], time.time() - count
    for i in range(count):
        rel = f"{('macaw', 'toucan', 'jay')[i % 3]}/f{i:05d}.jpg"
        (learn / rel).parent.mkdir(parents=True, exist_ok=True)
        (learn / rel).write_bytes(data)
        os.utime(learn / rel, (start + i, start + i))
        lines.append(json.dumps({"file": rel, "time": "2026-01-01T00:00:00+00:00", "model": {"version": "1"},
                                 "top_k": [["macaw", 0.5], ["toucan", 0.4]], "margin": 0.1, "entropy": 0.5}))
        names.append(rel)
    (learn / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    return names


def test_the_label_list_stays_fast_with_thousands_of_frames(tmp_path, coral):
    """3,000 kept frames: a page deep in the list answers well under a second, newest first; assigning
    moves the frames into the collection, discarding deletes them, ids that are paths touch nothing."""
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp_path / "model")
    learn, photos = tmp_path / "learn", tmp_path / "photos"
    names = write_kept_frames(learn, 3000)
    server = Server(model, "--learn", learn, "--collect", photos, "--state-dir", tmp_path / "state")
    try:
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            status, doc = server.json("GET", "/api/label?offset=1500&limit=48")
            timings.append(time.perf_counter() - start)
            assert status == 200 and doc["total"] == 3000 and len(doc["items"]) == 48
        # The list is made at start (0.1 s of CPU here for 3,000 frames) and reused until something
        # changes; a page is then a slice. Bounds with room for a 2-core host shared with other
        # test runs (load 7 seen), whatever its vector unit (file-system and JSON work, no arithmetic).
        assert timings[0] < 1.0 and max(timings[1:]) < 0.25, timings
        first = server.json("GET", "/api/label?offset=0&limit=3")[1]["items"]
        assert [i["id"] for i in first] == [f"k:{n}" for n in names[::-1][:3]]  # newest first
        assert first[0]["margin"] == 0.1 and first[0]["top_k"][0] == ["macaw", 0.5]
        ids = [i["id"] for i in first]
        status, doc = server.json("POST", "/api/label", {"ids": ids[:2] + ["k:../../etc/passwd", "../x"], "class": "parrot"})
        assert status == 200 and len(doc["done"]) == 2 and doc["missing"] == ["k:../../etc/passwd", "../x"]
        assert sorted(p.name for p in (photos / "parrot").iterdir()) == sorted(Path(n).name for n in names[::-1][:2])
        assert not (learn / names[-1]).exists()
        status, doc = server.json("POST", "/api/label", {"ids": [ids[2]], "discard": True})
        assert status == 200 and not (learn / names[-3]).exists()
        status, doc = server.json("GET", "/api/label?offset=0&limit=3&kind=collected")
        assert [i["class"] for i in doc["items"]] == ["parrot", "parrot"]
        status, doc = server.json("POST", "/api/label", {"ids": [doc["items"][0]["id"]], "class": "../up"})
        assert status == 400
        status, _, thumb = server.request("GET", f"/api/label/image?thumb=1&id=k:{names[0]}")
        assert status == 200 and thumb[:2] == b"\xff\xd8"
    finally:
        server.stop()


def test_links_in_the_collection_are_not_served(tmp_path, assets):
    """A link placed in the collection (to a file, or a class folder pointing elsewhere) is never
    indexed, so neither pull nor the label page can be led outside the collection by it."""
    from edgecls.serve.collection import Collection

    root, outside = tmp_path / "photos", tmp_path / "outside"
    (root / "cat").mkdir(parents=True)
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes((assets / "images/imagenet-photos/parrot.jpg").read_bytes())
    (root / "cat" / "real.jpg").write_bytes(secret.read_bytes())
    (root / "cat" / "link.jpg").symlink_to(secret)
    (root / "dog").symlink_to(outside, target_is_directory=True)
    collection = Collection(root, 10)
    assert [p.file for p in collection.photos()] == ["cat/real.jpg"]
