"""Streaming: a real video through `edgecls stream`, frame by frame against `edgecls predict`;
a slow model on a fast live source; faults."""
from __future__ import annotations

import io
import json
import time

import cv2
import numpy as np
import pytest

from edgecls.errors import ModelError
from edgecls.runtime import Classifier
from edgecls.stream import FolderSource, JsonLinesSink, SourceError, Stream, StreamOptions, open_source
from tests.conftest import run_cli

PHOTOS = ["parrot.jpg", "cat.bmp", "grace_hopper.bmp", "hot_dog.jpg", "bird.bmp", "dragonfly.bmp"]


@pytest.fixture(scope="module")
def video(assets, tmp_path_factory):
    """A lossless video of the real photos (each shown for 3 frames), and each frame as a PNG."""
    out = tmp_path_factory.mktemp("video")
    path = out / "photos.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 10, (320, 240))
    assert writer.isOpened()
    frames = []
    for name in PHOTOS:
        bgr = cv2.resize(cv2.imread(str(assets / "images/imagenet-photos" / name)), (320, 240), interpolation=cv2.INTER_AREA)
        for _ in range(3):
            writer.write(bgr)
            frame_png = out / f"frame_{len(frames):03d}.png"
            cv2.imwrite(str(frame_png), bgr)
            frames.append(frame_png)
    writer.release()
    return path, frames


@pytest.fixture(scope="module")
def coral_model(coral):
    return coral / "mobilenet_v2_1.0_224_quant.tflite", coral / "imagenet_labels.txt"


def test_stream_video_matches_predict_frame_by_frame(video, coral_model):
    path, frames = video
    model, labels = coral_model
    streamed = run_cli("stream", model, path, "--labels", labels, "-k", "2", "--stats-interval", "0")
    assert streamed.returncode == 0, streamed.stderr
    results = [json.loads(line) for line in streamed.stdout.splitlines() if line.startswith("{")]
    assert [r["frame"] for r in results] == list(range(len(frames)))  # a file: every frame, in order
    predicted = run_cli("predict", model, *frames, "--labels", labels, "-k", "2", "--json")
    assert predicted.returncode == 0, predicted.stderr
    expected = [json.loads(line) for line in predicted.stdout.splitlines() if line.startswith("{")]
    for got, want in zip(results, expected, strict=True):
        assert [label for label, _ in got["top_k"]] == [label for label, _ in want["top_k"]]
        assert np.allclose([s for _, s in got["top_k"]], [s for _, s in want["top_k"]], atol=1e-6)
        assert got["latency_ms"]["capture_to_result"] >= got["latency_ms"]["inference"] > 0
    assert results[0]["top_k"][0][0] == "macaw"
    summary = json.loads(streamed.stderr.split("summary ", 1)[1].splitlines()[0])
    assert summary["processed"] == summary["captured"] == len(frames) and summary["dropped"] == 0


def test_stream_writes_annotated_video(video, coral_model, tmp_path):
    path, frames = video
    model, labels = coral_model
    out = tmp_path / "annotated.avi"
    result = run_cli("stream", model, path, "--labels", labels, "--save", out, "--no-json", "--stats-interval", "0")
    assert result.returncode == 0, result.stderr
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)


class SlowEngine:
    """A real engine made artificially slow."""

    def __init__(self, engine, delay: float):
        self._engine, self.delay = engine, delay
        self.name, self.version = engine.name, engine.version
        self.input, self.output = engine.input, engine.output

    def run(self, batch):
        time.sleep(self.delay)
        return self._engine.run(batch)


class FastCamera:
    """A live source delivering a real photo at `fps`, numbering frames in its pixels' corner."""

    live = True
    description = "fake camera"

    def __init__(self, rgb, fps: float, count: int):
        self.rgb, self.period, self.count, self.i = rgb, 1.0 / fps, count, 0
        self.read_times: list[float] = []

    def read(self):
        if self.i >= self.count:
            return False, None, ""
        time.sleep(self.period)
        self.read_times.append(time.perf_counter())
        self.i += 1
        return True, self.rgb, ""

    def reopen(self):
        return False

    def close(self):
        pass


def test_slow_model_always_works_on_a_recent_frame(coral_model, assets):
    model, labels = coral_model
    clf = Classifier.from_artifact(model, labels=labels)
    clf.engine = SlowEngine(clf.engine, 0.08)  # ~12 inferences/s against a 100 fps camera
    camera = FastCamera(cv2.cvtColor(cv2.imread(str(assets / "images/imagenet-photos/parrot.jpg")), cv2.COLOR_BGR2RGB),
                        fps=100, count=150)
    seen = []
    stream = Stream(clf, camera, [lambda frame, top: seen.append((frame.index, camera.i, frame.timings))],
                    StreamOptions(stats_interval=0, retries=0))
    summary = stream.run()
    assert summary["dropped"] > 50, summary
    assert summary["processed"] + summary["dropped"] == summary["captured"] == 150  # every frame accounted for
    # Each result comes from a frame captured at most a few frames before the result was ready.
    staleness = [captured_so_far - 1 - index for index, captured_so_far, _ in seen]
    assert max(staleness) <= 25, staleness  # 0.08 s of inference + preprocessing at 100 fps
    latencies = [t["capture_to_result"] for _, _, t in seen]
    assert np.median(latencies) < 3 * 80, latencies  # no backlog: about one inference, not a queue of them


def test_camera_that_disappears_is_retried_then_ends(coral_model):
    model, labels = coral_model
    clf = Classifier.from_artifact(model, labels=labels)

    class Vanishing(FastCamera):
        def read(self):
            return False, None, ""

        def reopen(self):
            self.reopened = getattr(self, "reopened", 0) + 1
            return False

    camera = Vanishing(None, 10, 0)
    logs = []
    stream = Stream(clf, camera, [], StreamOptions(retries=3, retry_interval=0.01, stats_interval=0), log=logs.append)
    summary = stream.run()
    assert camera.reopened == 3 and summary["processed"] == 0
    assert "3 reconnection attempts failed" in stream.error
    assert sum("reconnecting" in line for line in logs) == 3


def test_unreadable_frames_are_counted_and_skipped(assets, coral_model, tmp_path):
    model, labels = coral_model
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate(PHOTOS[:3]):
        (folder / f"{i}_{name}").write_bytes((assets / "images/imagenet-photos" / name).read_bytes())
    (folder / "1b_broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    clf = Classifier.from_artifact(model, labels=labels)
    buffer = io.StringIO()
    summary = Stream(clf, FolderSource(folder), [JsonLinesSink(buffer)], StreamOptions(stats_interval=0),
                     log=lambda m: None).run()
    assert summary["unreadable"] == 1 and summary["processed"] == 3
    names = [json.loads(line)["name"] for line in buffer.getvalue().splitlines()]
    assert names == ["0_parrot.jpg", "1_cat.bmp", "2_grace_hopper.bmp"]


def test_sigterm_stops_cleanly_and_flushes(coral_model, assets, tmp_path):
    import signal
    import subprocess
    import sys

    model, labels = coral_model
    folder = tmp_path / "loop"
    folder.mkdir()
    (folder / "a.jpg").write_bytes((assets / "images/imagenet-photos/parrot.jpg").read_bytes())
    script = (
        "import sys; from edgecls.cli import main; sys.argv=['edgecls','stream',%r,%r,'--labels',%r,"
        "'--fps','50','--stats-interval','0']; "
        "import edgecls.stream as s; s.FolderSource.__init__.__defaults__ = (0.0, 10**6); main()"
    ) % (str(model), str(folder), str(labels))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) > 5 and all(line["top_k"][0][0] == "macaw" for line in lines)
    assert "summary" in err


def test_bad_sources_and_models(tmp_path, coral_model):
    model, labels = coral_model
    with pytest.raises(SourceError, match="no such file, folder or camera"):
        open_source(str(tmp_path / "missing.mp4"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match="no image files"):
        open_source(str(empty))
    result = run_cli("stream", model, tmp_path / "missing.mp4", "--labels", labels)
    assert result.returncode == 2 and "missing.mp4: no such file" in result.stderr.replace("\n", "")
    truncated = tmp_path / "m.tflite"
    truncated.write_bytes(model.read_bytes()[:5000])
    with pytest.raises(ModelError, match="truncated"):
        Classifier.from_artifact(truncated, labels=labels)


def test_manifest_that_does_not_match_its_model(coral_model, tmp_path):
    from edgecls.manifest import Manifest
    from edgecls.preprocess import Preprocessing

    model, labels = coral_model
    copy = tmp_path / "m.tflite"
    copy.write_bytes(model.read_bytes())
    Manifest("tflite", "int8", ["a", "b"], Preprocessing.named("tf", (224, 224)),
             input={"shape": [1, 160, 160, 3]}).save(copy)
    with pytest.raises(ModelError, match="(manifest does not match the model|model does not match its manifest).*input shape"):
        Classifier.from_artifact(copy)


def test_bgr_frames_through_the_api(coral_model, assets):
    model, labels = coral_model
    clf = Classifier.from_artifact(model, labels=labels)
    bgr = cv2.imread(str(assets / "images/imagenet-photos/parrot.jpg"))
    assert clf.predict(bgr, 1, color="BGR")[0][0] == "macaw"


class BrokenEngine(SlowEngine):
    """A real engine that has started failing on every call (a lost accelerator, say)."""

    def run(self, batch):
        raise RuntimeError("delegate lost")


def _photo_folder(assets, folder, names=PHOTOS[:3]):
    folder.mkdir()
    for i, name in enumerate(names):
        (folder / f"{i}_{name}").write_bytes((assets / "images/imagenet-photos" / name).read_bytes())
    return folder


def test_folder_at_a_frame_rate_ends_cleanly_after_its_last_image(assets, coral_model, tmp_path):
    """It used to be retried as a lost camera for 15 s, then exit 1."""
    model, labels = coral_model
    folder = _photo_folder(assets, tmp_path / "frames")
    started = time.perf_counter()
    result = run_cli("stream", model, folder, "--labels", labels, "--fps", "20", "--stats-interval", "0")
    assert result.returncode == 0, result.stderr
    assert "reconnecting" not in result.stderr
    assert 1 <= len(result.stdout.splitlines()) <= 3
    assert time.perf_counter() - started < 14  # interpreter start-up and model load, not 15 s of retries
    notes = tmp_path / "notes.mp4"
    notes.write_text("these are my notes, not a video\n")
    result = run_cli("stream", model, notes, "--labels", labels, "--stats-interval", "0")
    assert result.returncode != 0 and "notes.mp4: not a video" in " ".join(result.stderr.split()), result.stderr
    assert "moov atom" not in result.stderr  # FFmpeg's chatter, not ours


def test_a_finite_source_without_frames_is_an_error(coral_model):
    """A file some backend opens but that yields no frame used to end with rc 0 and 0 frames."""
    model, labels = coral_model

    class NoFrames:
        live, finite, description = False, True, "notes.txt"
        closed_by = None

        def read(self):
            return False, None, ""

        def reopen(self):
            return False

        def close(self):
            pass

    stream = Stream(Classifier.from_artifact(model, labels=labels), NoFrames(), [], StreamOptions(stats_interval=0))
    assert stream.run()["processed"] == 0
    assert stream.error == "notes.txt: ended without a single readable frame"


def test_a_stage_that_keeps_failing_stops_the_stream_with_its_error(assets, coral_model, tmp_path):
    """Every exception used to become an 'unreadable frame', forever."""
    import threading

    model, labels = coral_model
    clf = Classifier.from_artifact(model, labels=labels)
    clf.engine = BrokenEngine(clf.engine, 0)
    endless = FolderSource(_photo_folder(assets, tmp_path / "frames"), loop=10**6)
    logs = []
    stream = Stream(clf, endless, [], StreamOptions(stats_interval=0, max_failures=5), log=logs.append)
    runner = threading.Thread(target=stream.run, daemon=True)
    runner.start()
    runner.join(timeout=30)
    assert not runner.is_alive(), "the stream kept going on a broken engine"
    assert stream.error == "inference failed on 5 frames in a row; stopping: delegate lost"
    assert stream.stats.failed == 5 and stream.stats.unreadable == 0
    assert sum("inference failed (delegate lost)" in line for line in logs) == 5


def test_stop_reaches_waiting_stages_and_the_capture_thread_releases_the_source(coral_model):
    """Stages waiting on a live mailbox ignored stop(); the source was released from another thread."""
    import threading

    model, labels = coral_model
    gate = threading.Event()

    class StuckCamera:
        live, finite, description = True, False, "stuck camera"
        closed_by = None

        def read(self):
            gate.wait(10)  # a camera that stopped delivering: read() blocks
            return False, None, ""

        def reopen(self):
            return False

        def close(self):
            StuckCamera.closed_by = threading.current_thread().name

    stream = Stream(Classifier.from_artifact(model, labels=labels), StuckCamera(), [],
                    StreamOptions(stats_interval=0, retries=0), log=lambda m: None)
    alive = {}

    def later():
        time.sleep(0.3)
        stream.stop()
        time.sleep(1.0)  # the stages had a second to notice
        alive.update({t.name: t.is_alive() for t in threading.enumerate() if t.name.startswith("edgecls-")})
        gate.set()

    threading.Thread(target=later, daemon=True).start()
    stream.run()
    assert alive.get("edgecls-_preprocess") is None and alive.get("edgecls-_infer") is None, alive
    assert StuckCamera.closed_by == "edgecls-_capture"
