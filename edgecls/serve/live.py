"""The camera (or video, or folder) stream inside the service, and what viewers get from it.

The stream is edgecls' own pipeline (`edgecls.stream.Stream`) with its inference stage routed
through the engine thread, so frames and HTTP requests share one engine and follow model swaps.
A supervisor reopens a lost source with backoff (readiness is false meanwhile) and replays a video
file or folder when it ends. Viewers never get a queue: once per processed frame, at most
`view_fps` times a second and only while someone watches, the newest frame is encoded once and
every viewer is sent the newest encoding when it is ready for one — viewers cost encoding once,
never inference.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from ..console import redact
from ..stream import Frame, SourceError, Stream, StreamOptions, open_source
from .config import ServeConfig
from .engine import EngineWorker
from .images import encode_jpeg, fit_width
from .references import ReferencePool

FRAME_STATES = ("captured", "processed", "dropped", "unreadable", "failed")
FOLDER_FPS = 10.0  # an image folder's rate when --fps is not given


def paced(source: Any, fps: float | None) -> Any:
    """A video file or image folder played like a camera: read at `fps` frames per second (None:
    a video at its own rate, a folder at FOLDER_FPS; 0: as fast as the model goes), newest frame
    first. Unpaced, a replayed folder of small pictures kept a core busy at 1,228 frames/s for a
    live view that shows 10."""
    if not getattr(source, "finite", False) or fps == 0:
        return source
    own = getattr(source, "fps", 0.0) if not hasattr(source, "files") else 0.0  # a video's own rate
    rate = fps if fps is not None else (own if 1.0 <= own <= 240.0 else FOLDER_FPS)
    source.interval = 1.0 / rate  # the capture thread waits this long between reads (stoppable)
    source.live = True            # so the pipeline keeps the newest frame instead of queueing
    return source


@dataclass
class Published:
    """What viewers see of one frame."""

    version: int
    index: int
    top_k: list
    model: str
    jpeg: bytes
    cam_jpeg: bytes | None
    stats: dict[str, Any]
    wall_time: float = field(default_factory=time.time)

    def header(self, cam: bool) -> dict[str, Any]:
        return {"frame": self.index, "top_k": [[label, round(p, 4)] for label, p in self.top_k], "model": self.model,
                "cam": bool(cam and self.cam_jpeg is not None), "time": self.wall_time, **self.stats}


class ServeStream(Stream):
    """The stream pipeline with inference sent through the engine thread, on the current model."""

    def __init__(self, feed: "LiveFeed", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.feed = feed

    def prepare_frame(self, frame: Frame) -> None:
        model = self.feed.store.current
        frame.extras["model"] = model
        frame.inputs = model.clf.prepare(frame.rgb)[None]

    def infer_frame(self, frame: Frame) -> None:
        model = frame.extras["model"]  # the model the frame was prepared for, even across a swap
        cam = self.feed.cam_viewers > 0 and model.cam_available
        job = self.feed.worker.run_blocking(model, frame.inputs, cam, cancelled=self.stop_event.is_set)
        frame.scores, frame.labels, frame.inputs = job.scores[0], model.labels, None
        frame.extras["feature_map"] = job.feature_map


class LiveFeed:
    stream_class: type = ServeStream  # collect mode without a model streams through a subclass that does not infer

    def __init__(self, cfg: ServeConfig, store: Any, worker: EngineWorker, loop: asyncio.AbstractEventLoop,
                 log: Callable[[str], None], learn: Any = None, on_learned: Callable[[], None] = lambda: None):
        self.cfg, self.store, self.worker, self.loop, self.log = cfg, store, worker, loop, log
        self.learn, self.on_learned = learn, on_learned
        self.totals = dict.fromkeys(FRAME_STATES, 0)
        self.source_error: str | None = None
        self.last_result: float | None = None
        self.viewers = {"websocket": 0, "mjpeg": 0}
        self.cam_viewers = 0
        self.latest: Published | None = None
        # The newest classified frame at the camera's full resolution, for `--collect`:
        # (frame index, RGB, top-k, model, wall time); one reference, replaced frame after frame.
        self.newest: tuple | None = None
        self._closing = False
        self._last_sink_error = ""
        self._event = asyncio.Event()
        self._times: deque[float] = deque(maxlen=256)
        self._latency: deque[float] = deque(maxlen=300)
        self.pool = ReferencePool(cfg.state_dir / "references", log)
        self._last_encode = 0.0
        self._stream: ServeStream | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="edgecls-live", daemon=True)

    # --- life --------------------------------------------------------------------
    def start(self) -> None:
        self.pool.load()
        if self.cfg.source is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._stream is not None:
            self._stream.stop()
        if self._thread.is_alive():
            self._thread.join(10)
        self.pool.save()

    def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                error = self._one_run()
            except Exception as exc:  # noqa: BLE001 - the stream restarts; the server keeps answering
                error = f"{type(exc).__name__}: {exc}"
            if error:
                self._lost(error)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            else:
                backoff = 0.5  # a file or folder that ended: replayed from its start

    def _one_run(self) -> str | None:
        """Open the source and stream it until it ends; the error that ended it, if any."""
        try:
            source = paced(open_source(self.cfg.source), self.cfg.fps)
        except (SourceError, OSError) as exc:
            return str(exc)
        stream = self.stream_class(self, self.classifier(), source, [self._on_result],
                             StreamOptions(top_k=self.cfg.top_k, retries=2, retry_interval=0.5, stats_interval=0),
                             log=self.log)
        self._stream = stream
        if self._stopping.is_set():
            stream.stop()
        try:
            stream.run()
        finally:
            self._add_totals(stream)
            self._stream = None
        return stream.error

    def classifier(self) -> Any:
        return self.store.current.clf

    def _lost(self, message: str) -> None:
        if message != self.source_error:
            self.log(f"source: {message}")
        self.source_error = message

    def _add_totals(self, stream: Stream) -> None:
        for key in FRAME_STATES:
            self.totals[key] += getattr(stream.stats, key)

    # --- results (in the stream's thread) -----------------------------------------
    def _on_result(self, frame: Frame, top: list) -> None:
        now = time.perf_counter()
        self.last_result = now
        self.source_error = None
        self._times.append(now)
        self._latency.append(frame.timings.get("capture_to_result", 0.0))
        model = frame.extras["model"]
        self.newest = (frame.index, frame.rgb, top, model, time.time())
        if self.claim_reference():
            self.remember(frame.rgb)
        try:  # a full disk or a failed encoding costs this frame its extras, never the stream
            if self.learn is not None and self.learn.offer(frame.rgb, frame.scores, top, model, frame.index):
                self.on_learned()
            watching = sum(self.viewers.values())
            if watching and now - self._last_encode >= 1.0 / self.cfg.view_fps:
                self._last_encode = now
                self._publish(frame, top, model)
        except Exception as exc:  # noqa: BLE001
            message = f"frame {frame.index}: live view or --learn failed: {type(exc).__name__}: {exc}"
            if message.split(":", 1)[1] != self._last_sink_error:
                self.log(message)
            self._last_sink_error = message.split(":", 1)[1]

    def remember(self, rgb: np.ndarray) -> None:
        """Keep a small copy of a recent picture: reference material for checking a new model."""
        self.pool.remember(rgb)

    def claim_reference(self) -> bool:
        """True at most once a second: the caller then passes a picture to `remember`."""
        return self.pool.claim()

    def references(self) -> list[np.ndarray]:
        return self.pool.pictures()

    def _publish(self, frame: Frame, top: list, model: Any) -> None:
        view = fit_width(frame.rgb, self.cfg.view_width)
        jpeg = encode_jpeg(view, self.cfg.view_quality)
        cam_jpeg = None
        fmap = frame.extras.get("feature_map")
        if fmap is not None and self.cam_viewers:
            from ..cam import class_activation_map, heat_on_picture, overlay

            kernel, _ = model.cam()
            heat = heat_on_picture(frame.rgb, class_activation_map(fmap, kernel[:, int(np.argmax(frame.scores))]),
                                   model.clf.preprocessing)
            cam_jpeg = encode_jpeg(fit_width(overlay(frame.rgb, heat), self.cfg.view_width), self.cfg.view_quality)
        version = (self.latest.version + 1) if self.latest else 1
        published = Published(version, frame.index, top, str(model.version), jpeg, cam_jpeg, self.stats())
        self.loop.call_soon_threadsafe(self._announce, published)

    def _announce(self, published: Published) -> None:
        """In the event loop: make the frame the newest and wake every viewer waiting for one."""
        self.latest = published
        event, self._event = self._event, asyncio.Event()
        event.set()

    # --- for viewers and health (event loop) ----------------------------------------
    async def newer_than(self, version: int) -> Published:
        while self.latest is None or self.latest.version <= version:
            if self._closing:
                raise ConnectionResetError("the server is shutting down")
            await self._event.wait()
        return self.latest

    def wake_all(self) -> None:
        """Shutdown: every viewer waiting for a frame stops waiting."""
        self._closing = True
        self._event.set()

    @contextmanager
    def viewer(self, transport: str, cam: bool) -> Iterator[None]:
        self.viewers[transport] += 1
        self.cam_viewers += cam
        try:
            yield
        finally:
            self.viewers[transport] -= 1
            self.cam_viewers -= cam

    @property
    def delivering(self) -> bool:
        """No source, or a result within `stale_after` seconds."""
        if self.cfg.source is None:
            return True
        return self.last_result is not None and time.perf_counter() - self.last_result < self.cfg.stale_after

    def frames(self) -> dict[str, int]:
        stream = self._stream
        return {k: self.totals[k] + (getattr(stream.stats, k) if stream else 0) for k in FRAME_STATES}

    def stats(self) -> dict[str, Any]:
        """fps over the last 3 s, latency percentiles of recent frames, counters, temperature."""
        from .metrics import cpu_temperature

        now = time.perf_counter()
        recent = [t for t in self._times if now - t <= 3.0]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        lat = np.asarray(self._latency) if self._latency else None
        pct = ({f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)} if lat is not None else {})
        return {"fps": round(fps, 1), "latency_ms": pct, "frames": self.frames(), "cpu_temperature": cpu_temperature(),
                "source": redact(self.cfg.source) if self.cfg.source is not None else None,
                "source_error": redact(self.source_error) if self.source_error else None}
