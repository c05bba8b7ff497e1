"""Camera-stream inference: a pipelined, bounded, fault-tolerant loop over the light runtime.

Stages run in their own threads and overlap: capture -> preprocess -> infer -> sinks. OpenCV,
numpy and the engines release the GIL in their heavy calls, so throughput approaches
1 / (slowest stage) rather than 1 / (sum of stages).

Live sources (cameras, URLs, GStreamer pipelines, Picamera2) never make inference work on a
stale frame: OpenCV's driver buffer is shrunk to one frame where the backend allows it, and the
capture thread keeps reading as fast as the camera delivers, leaving only the newest frame in a
one-slot mailbox; frames replaced there unprocessed are counted as dropped. Files and image
folders are not live: by default every frame is processed, with back-pressure instead of drops.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np

from .errors import EdgeclsError, ImageError
from .preprocess import is_image_name, read_rgb

END = object()  # end-of-stream marker passed down the pipeline


class SourceError(EdgeclsError):
    """A stream source could not be opened or was lost for good."""


@dataclass
class Frame:
    index: int
    captured: float               # time.perf_counter() when the frame was read
    rgb: np.ndarray | None = None
    name: str = ""
    inputs: np.ndarray | None = None
    scores: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    labels: list[str] | None = None   # the labels of the model that scored it (default: the stream's)
    extras: dict[str, Any] = field(default_factory=dict)  # what a subclass's stages pass on (a CAM feature map)


# --- sources ----------------------------------------------------------------------------
class Source(Protocol):
    live: bool          # frames arrive in real time: drop stale ones rather than queue them
    finite: bool        # ends by itself (a file, a folder): no reconnection at its end
    description: str

    def read(self) -> tuple[bool, np.ndarray | None, str]:
        """(ok, RGB frame or None for an unreadable frame, name). ok=False: no more frames."""

    def reopen(self) -> bool: ...

    def close(self) -> None: ...


class OpenCVSource:
    """A camera index, video file, RTSP/HTTP URL or GStreamer pipeline, through cv2.VideoCapture."""

    def __init__(self, spec: str):
        import cv2

        self._cv2 = cv2
        self.spec = spec
        self.is_camera = spec.isdigit()
        self.finite = Path(spec).is_file()
        self.live = not self.finite
        self.description = f"camera {spec}" if self.is_camera else spec
        self._first = None
        # FFmpeg's own complaints ("moov atom not found") would precede ours; ours name the file.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        if not self._open():
            if self.finite:
                raise SourceError(f"{spec}: not a video OpenCV can open (not a video file, corrupt, or a codec "
                                  "this OpenCV build lacks)")
            raise SourceError(f"{spec}: cannot open this video source (no such camera, file or stream)")
        if self.finite:
            # Some backends "open" any file; a video file must yield a frame to count as one.
            ok, bgr = self._cap.read()
            if not ok or bgr is None or bgr.size == 0:
                self._cap.release()
                raise SourceError(f"{spec}: no video frame could be decoded (not a video file, or a codec "
                                  "this OpenCV build lacks)")
            self._first = bgr
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)

    def _open(self) -> bool:
        cv2 = self._cv2
        if self.is_camera:
            self._cap = cv2.VideoCapture(int(self.spec))
        elif "!" in self.spec:
            self._cap = cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        else:
            self._cap = cv2.VideoCapture(self.spec)
        if self.live:
            # Where the backend honours it (V4L2, some network backends), the driver then holds
            # one frame instead of several; the capture thread does the rest.
            self._cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return bool(self._cap.isOpened())

    def read(self):
        if self._first is not None:
            ok, bgr, self._first = True, self._first, None
        else:
            ok, bgr = self._cap.read()
        if not ok:
            return False, None, ""
        if bgr is None or bgr.size == 0:
            return True, None, ""
        return True, bgr[:, :, ::-1], ""

    def reopen(self) -> bool:
        self._cap.release()
        return self._open()

    def close(self) -> None:
        self._cap.release()


class FolderSource:
    """The images of a folder, in name order, played as a stream (optionally at a frame rate:
    then it behaves like a camera, dropping frames the model has no time for, and still ends
    after its last image)."""

    finite = True

    def __init__(self, folder: str | Path, fps: float = 0.0, loop: int = 1):
        self.folder = Path(folder)
        self.files = sorted(p for p in self.folder.iterdir() if p.is_file() and is_image_name(p))
        if not self.files:
            raise SourceError(f"{self.folder}: no image files to stream")
        self.description = f"folder {self.folder} ({len(self.files)} images)"
        self.fps, self.loop, self._i = fps, loop, 0
        self.live = fps > 0
        self.interval = 1.0 / fps if fps > 0 else 0.0  # the capture thread paces reads (stoppable)

    def read(self):
        if self._i >= len(self.files) * self.loop:
            return False, None, ""
        path = self.files[self._i % len(self.files)]
        self._i += 1
        try:
            return True, read_rgb(path), path.name
        except ImageError:
            return True, None, path.name

    def reopen(self) -> bool:
        return True

    def close(self) -> None:
        pass


class Picamera2Source:
    """The Raspberry Pi camera through Picamera2 (RGB888 frames straight from the ISP)."""

    live = True
    finite = False

    def __init__(self, index: int = 0, size: tuple[int, int] = (640, 480)):
        try:
            from picamera2 import Picamera2  # type: ignore[import-not-found]
        except ImportError:
            raise SourceError("picamera2 is not installed (on Raspberry Pi OS: sudo apt install python3-picamera2)") from None
        self._cam = Picamera2(index)
        self._cam.configure(self._cam.create_video_configuration(main={"size": size, "format": "RGB888"}))
        self._cam.start()
        self.description = f"picamera2 {index}"

    def read(self):
        frame = self._cam.capture_array()
        # Picamera2's "RGB888" is BGR byte order in memory (libcamera naming).
        return True, np.ascontiguousarray(frame[:, :, 2::-1]), ""

    def reopen(self) -> bool:
        return False

    def close(self) -> None:
        self._cam.stop()


def open_source(spec: str | int, fps: float = 0.0) -> Source:
    """Open a camera index, video file, URL, GStreamer pipeline, `picamera2[:N]` or image folder."""
    spec = str(spec)
    if spec.startswith("picamera2"):
        return Picamera2Source(int(spec.split(":", 1)[1]) if ":" in spec else 0)
    if Path(spec).is_dir():
        return FolderSource(spec, fps=fps)
    if not (spec.isdigit() or "://" in spec or "!" in spec) and not Path(spec).exists():
        raise SourceError(f"{spec}: no such file, folder or camera")
    return OpenCVSource(spec)


# --- sinks --------------------------------------------------------------------------------
class JsonLinesSink:
    """One JSON object per result: timestamp, frame number, top-k, latencies."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, frame: Frame, top: list[tuple[str, float]]) -> None:
        record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "frame": frame.index,
                  "name": frame.name or None, "top_k": [[label, round(score, 6)] for label, score in top],
                  "latency_ms": {k: round(v, 3) for k, v in frame.timings.items()}}
        self.stream.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.stream.flush()


class VideoSink:
    """Writes each frame annotated with its top label to a video file."""

    def __init__(self, path: str | Path, fps: float = 15.0):
        self.path, self.fps, self._writer = Path(path), fps or 15.0, None

    def __call__(self, frame: Frame, top: list[tuple[str, float]]) -> None:
        import cv2

        bgr = np.ascontiguousarray(frame.rgb[:, :, ::-1])
        if self._writer is None:
            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.path.suffix == ".mp4" else "MJPG"))
            self._writer = cv2.VideoWriter(str(self.path), fourcc, self.fps, (bgr.shape[1], bgr.shape[0]))
            if not self._writer.isOpened():
                raise SourceError(f"{self.path}: cannot write a video file here")
        label, score = top[0]
        cv2.putText(bgr, f"{label} {score:.2f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
        self._writer.write(bgr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


class WindowSink:
    """Shows annotated frames in a window (needs an OpenCV build with GUI support)."""

    def __init__(self, title: str = "edgecls"):
        self.title = title

    def __call__(self, frame: Frame, top: list[tuple[str, float]]) -> None:
        import cv2

        bgr = np.ascontiguousarray(frame.rgb[:, :, ::-1])
        cv2.putText(bgr, f"{top[0][0]} {top[0][1]:.2f}", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2)
        try:
            cv2.imshow(self.title, bgr)
            cv2.waitKey(1)
        except cv2.error:
            raise SourceError("this OpenCV build has no GUI (opencv-python-headless); drop --show "
                              "or pip install opencv-python") from None

    def close(self) -> None:
        try:
            import cv2

            cv2.destroyAllWindows()
        except Exception:  # noqa: BLE001 - headless builds
            pass


# --- statistics -------------------------------------------------------------------------
class StreamStats:
    """Counts and a bounded window of latencies: memory stays flat however long the stream runs."""

    def __init__(self, window: int = 10000):
        self.captured = self.processed = self.dropped = self.unreadable = self.failed = 0
        self.latencies: deque[float] = deque(maxlen=window)
        self.started = time.perf_counter()
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def summary(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.started
        lat = np.asarray(self.latencies) if self.latencies else np.zeros(1)
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        return {"captured": self.captured, "processed": self.processed, "dropped": self.dropped,
                "unreadable": self.unreadable, "failed": self.failed, "seconds": round(elapsed, 3),
                "fps": round(self.processed / elapsed, 2) if elapsed > 0 else 0.0,
                "latency_ms": {"p50": round(float(p50), 2), "p90": round(float(p90), 2), "p99": round(float(p99), 2)}}


class LatestFrame:
    """A one-slot mailbox: a new frame replaces an unconsumed one (which counts as dropped)."""

    def __init__(self, stats: StreamStats):
        self._cond = threading.Condition()
        self._item: Any = None
        self._stats = stats

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None and self._item is not END:
                self._stats.add("dropped")
            if self._item is not END:
                self._item = item
            self._cond.notify()

    def get(self, timeout: float = 0.1) -> Any:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item


# --- the pipeline ---------------------------------------------------------------------------
Sink = Callable[[Frame, list], None]


@dataclass
class StreamOptions:
    top_k: int = 3
    max_frames: int = 0                 # 0: until the source ends or a stop signal
    drop_frames: bool | None = None     # default: drop on live sources only
    retries: int = 5                    # reconnect attempts when a live source fails
    retry_interval: float = 0.5         # seconds, doubled after each failed attempt
    stats_interval: float = 5.0         # seconds between live statistics lines (0: none)
    queue_size: int = 2
    max_failures: int = 10              # a stage failing on this many frames in a row stops the stream


class Stream:
    """Runs a classifier over a source into sinks; `run()` returns the final statistics.

    Threads: the capture thread alone reads and closes the source; one thread calls
    `Classifier.prepare` and one other `Classifier.scores_from_inputs` (see the Classifier's
    notes on thread safety); sinks run in the thread that called `run()`. Every wait polls the
    stop event, so stop() ends the stream within about 0.1 s plus the work in progress.
    """

    def __init__(self, classifier, source: Source, sinks: Iterable[Sink], options: StreamOptions | None = None,
                 log: Callable[[str], None] | None = None):
        self.clf, self.source, self.sinks = classifier, source, list(sinks)
        self.opts = options or StreamOptions()
        self.stats = StreamStats()
        self.stop_event = threading.Event()
        self.error: str | None = None
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        drop = self.opts.drop_frames if self.opts.drop_frames is not None else source.live
        # Live: one-slot mailboxes up to the engine, so it always takes the newest prepared frame;
        # a queue there would hold frames that grow stale while the engine is busy.
        self._captured: Any = LatestFrame(self.stats) if drop else queue.Queue(self.opts.queue_size)
        self._prepared: Any = LatestFrame(self.stats) if drop else queue.Queue(self.opts.queue_size)
        self._inferred: queue.Queue = queue.Queue(self.opts.queue_size)

    def stop(self, *_: Any) -> None:
        self.stop_event.set()

    # Every put/get polls the stop event so that no thread can block forever.
    def _put(self, q, item) -> bool:
        if isinstance(q, LatestFrame):
            q.put(item)
            return True
        while not self.stop_event.is_set() or item is END:
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                if item is END and self.stop_event.is_set():
                    try:
                        q.get_nowait()  # make room for the end marker on shutdown
                    except queue.Empty:
                        pass
        return False

    def _get(self, q):
        while True:
            if isinstance(q, LatestFrame):
                item = q.get(0.1)
            else:
                try:
                    item = q.get(timeout=0.1)
                except queue.Empty:
                    item = None
            if item is not None:
                return item
            if self.stop_event.is_set():
                return END

    def _capture(self) -> None:
        index, failures = 0, 0
        finite = getattr(self.source, "finite", not self.source.live)
        interval = getattr(self.source, "interval", 0.0)
        next_read = time.perf_counter()
        try:
            while not self.stop_event.is_set():
                if self.opts.max_frames and index >= self.opts.max_frames:
                    break
                if interval:  # a paced source (a folder at --fps): wait, but wake on stop()
                    delay = next_read - time.perf_counter()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                    next_read = max(next_read, time.perf_counter()) + interval
                ok, rgb, name = self.source.read()
                if not ok:
                    if finite:  # end of a file or folder: a clean end, unless nothing came at all
                        if self.stats.captured == 0:
                            self.error = f"{self.source.description}: ended without a single readable frame"
                        break
                    if not self._reconnect(failures := failures + 1):
                        break
                    continue
                failures = 0
                if rgb is None:
                    self.stats.add("unreadable")
                    self.log(f"frame {index}{' (' + name + ')' if name else ''}: unreadable, skipped")
                    index += 1
                    continue
                self.stats.add("captured")
                self._put(self._captured, Frame(index, time.perf_counter(), rgb, name))
                index += 1
        except Exception as exc:  # noqa: BLE001 - reported, then the stream ends cleanly
            self.error = f"capture failed: {exc}"
        finally:
            self._put(self._captured, END)
            # Released here, by the thread that reads it: releasing a VideoCapture from another
            # thread while read() runs is undefined behaviour in OpenCV's backends.
            try:
                self.source.close()
            except Exception as exc:  # noqa: BLE001 - the stream is over; say so and go on
                self.log(f"{self.source.description}: closing failed ({exc})")

    def _reconnect(self, attempt: int) -> bool:
        if attempt > self.opts.retries:
            self.error = (f"{self.source.description}: lost, and {self.opts.retries} reconnection attempts "
                          "failed; stopping")
            return False
        wait = self.opts.retry_interval * (2 ** (attempt - 1))
        self.log(f"{self.source.description}: no frame; reconnecting in {wait:.1f} s ({attempt}/{self.opts.retries})")
        if self.stop_event.wait(wait):
            return False
        self.source.reopen()
        return True

    def _stage(self, name: str, source, target, work: Callable[[Frame], None]) -> None:
        """Take frames from `source`, time `work` on each, pass them to `target`; END ends it.

        One failing frame is skipped; `max_failures` in a row (a broken engine, not a bad frame)
        stop the stream with that error.
        """
        failures = 0
        while True:
            frame = self._get(source)
            if frame is END:
                break
            t = time.perf_counter()
            try:
                work(frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the stream
                failures += 1
                self.stats.add("failed")
                self.log(f"frame {frame.index}: {name} failed ({exc}), skipped")
                if failures >= self.opts.max_failures:
                    self.error = f"{name} failed on {failures} frames in a row; stopping: {exc}"
                    self.stop_event.set()
                    break
                continue
            failures = 0
            frame.timings[name] = (time.perf_counter() - t) * 1e3
            if not self._put(target, frame):
                break
        self._put(target, END)

    # The two model stages; a subclass may route them elsewhere (`edgecls serve` sends inference
    # through the one thread that owns its engines). Each runs in its own thread.
    def prepare_frame(self, frame: Frame) -> None:
        frame.inputs = self.clf.prepare(frame.rgb)[None]

    def infer_frame(self, frame: Frame) -> None:
        frame.scores = self.clf.scores_from_inputs(frame.inputs)[0]
        frame.inputs = None

    def _preprocess(self) -> None:
        self._stage("preprocess", self._captured, self._prepared, self.prepare_frame)

    def _infer(self) -> None:
        self._stage("inference", self._prepared, self._inferred, self.infer_frame)

    def run(self) -> dict[str, Any]:
        """Run until the source ends, `max_frames`, or stop(); flush sinks; return statistics."""
        from .runtime import top_k

        threads = [threading.Thread(target=fn, name=f"edgecls-{fn.__name__}", daemon=True)
                   for fn in (self._capture, self._preprocess, self._infer)]
        for th in threads:
            th.start()
        last_report = time.perf_counter()
        try:
            while True:
                frame = self._get(self._inferred)
                if frame is END:
                    break
                labels = frame.labels if frame.labels is not None else self.clf.labels
                top = top_k(frame.scores, labels, self.opts.top_k)
                frame.timings["capture_to_result"] = (time.perf_counter() - frame.captured) * 1e3
                for sink in self.sinks:
                    sink(frame, top)
                self.stats.add("processed")
                self.stats.latencies.append(frame.timings["capture_to_result"])
                now = time.perf_counter()
                if self.opts.stats_interval and now - last_report >= self.opts.stats_interval:
                    last_report = now
                    self.log("stats " + json.dumps(self.stats.summary()))
        finally:
            self.stop_event.set()
            for th in threads:
                th.join(timeout=5)
                if th.is_alive():
                    self.log(f"{th.name} did not stop within 5 s (blocked in the source or engine); left behind")
            for sink in self.sinks:
                close = getattr(sink, "close", None)
                if close:
                    close()
        return self.stats.summary()


def install_signal_handlers(stream: Stream) -> None:
    """Ctrl-C and SIGTERM stop the stream cleanly, flushing every sink."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stream.stop())
