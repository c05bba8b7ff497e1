"""The pipeline: capture -> preprocess -> infer -> sinks, each stage in its own thread, bounded,
with statistics, reconnection of live sources and a clean stop (signals included)."""
from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from .sources import END, Frame, Source

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
        from ..runtime import top_k

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
    """Ctrl-C and SIGTERM stop the stream cleanly, flushing every sink (one that starts ignored
    stays ignored)."""
    from ..signals import install

    for sig in (signal.SIGINT, signal.SIGTERM):
        install(sig, lambda *_: stream.stop())  # not in forked children (edgecls.signals)
