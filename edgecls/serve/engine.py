"""The one thread that runs models, and the bounded admission in front of it.

A LiteRT interpreter (like most engines) must be run by one thread at a time, so every engine
call of the process — HTTP requests and stream frames alike — goes through `EngineWorker`, a
single thread draining a FIFO. Requests are admitted by `Admission` up to a fixed number
(decoding, queued or running); beyond it they are answered 503 with Retry-After at once, so a
burst costs bounded memory. A job carries the model it was prepared for: a swap publishes a new
model for the next jobs while jobs already prepared finish on the old one, whole.
"""
from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .images import RequestError


class EngineFailed(RuntimeError):
    """The engine failed on a known-good input: the server's fault, answered 500; the details go to
    the server log, never to the client."""


@dataclass
class LoadedModel:
    """An opened artifact and what the service says about it."""

    clf: Any                 # runtime.Classifier
    version: int
    sha256: str
    path: Path
    origin: str              # "command line", "upload", "watch", "rollback", "resumed"
    loaded_at: float = field(default_factory=time.time)
    _cam: tuple | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.clf.labels)

    @property
    def cam_available(self) -> bool:
        from ..cam import cam_weights_path

        return self.path.suffix.lower() in (".tflite", ".onnx") and cam_weights_path(self.path).is_file()

    def cam(self) -> tuple[np.ndarray, Any]:
        """(dense kernel, FeatureMapRunner), opened on first use."""
        if self._cam is None:
            from ..cam import FeatureMapRunner, load_cam_weights

            kernel = load_cam_weights(self.path)
            self._cam = (kernel, FeatureMapRunner(self.path, len(self.labels)))
        return self._cam

    def describe(self) -> dict[str, Any]:
        manifest = self.clf.manifest
        return {"version": str(self.version), "sha256": self.sha256, "file": self.path.name, "origin": self.origin,
                "format": manifest.format if manifest else self.path.suffix.lstrip("."),
                "quantization": manifest.quantization if manifest else None,
                "engine": self.clf.engine.version, "classes": len(self.labels), "cam": self.cam_available}


def open_model(path: Path, version: int, origin: str, engine_options: dict[str, Any],
               labels: Path | None = None) -> LoadedModel:
    """Open an artifact through the runtime (checksums and structure checked there)."""
    from ..files import sha256_file
    from ..runtime import Classifier

    clf = Classifier.from_artifact(path, labels=labels, **engine_options)
    sha = clf.manifest.artifact_sha256 if clf.manifest and clf.manifest.artifact_sha256 else sha256_file(path)
    return LoadedModel(clf, version, sha, Path(path), origin)


@dataclass
class Job:
    model: LoadedModel
    inputs: np.ndarray | None           # (N, ...) in the engine's dtype and layout; None: `prepare` makes them
    cam: bool = False
    trusted: bool = True                # inputs this server prepared (known-good); False: a client's own tensor
    prepare: Callable[[], tuple[Any, np.ndarray]] | None = None  # -> (picture, inputs), run by the engine thread
    picture: Any = None
    done: Callable[["Job"], None] | None = None
    submitted: float = field(default_factory=time.perf_counter)
    scores: np.ndarray | None = None
    feature_map: np.ndarray | None = None
    error: BaseException | None = None
    queue_ms: float = 0.0
    decode_ms: float = 0.0
    inference_ms: float = 0.0


class EngineWorker:
    """Runs jobs one at a time in its own thread; notes failures and hangs for the health checks."""

    def __init__(self, observe: Callable[[float], None] | None = None, hang_after: float = 30.0,
                 probe_after: float = 5.0):
        self._queue: queue.Queue = queue.Queue()
        self.probe_after = probe_after
        self._observe = observe or (lambda s: None)
        self.hang_after = hang_after
        self.failures = 0                 # consecutive failed jobs
        self.last_error: str | None = None
        self.busy_since: float | None = None
        self.mean_seconds = 0.05          # running mean of one job, for Retry-After
        self._thread = threading.Thread(target=self._loop, name="edgecls-engine", daemon=True)
        self._stopping = False
        self.current: Callable[[], LoadedModel | None] = lambda: None  # the serving model, for probes

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._queue.put(None)
        if self._thread.ident is not None:  # started (a start-up failure may come first)
            self._thread.join(timeout)

    @property
    def healthy(self) -> bool:
        return self.failures < 3

    @property
    def alive(self) -> bool:
        busy = self.busy_since
        return self._thread.is_alive() and (busy is None or time.perf_counter() - busy < self.hang_after)

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def idle(self) -> bool:
        """Nothing queued or running: a request can be decoded by the engine thread itself, saving
        two thread hand-offs (under load, decoding in other threads overlaps it with inference)."""
        return self.busy_since is None and self._queue.empty()

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    async def run(self, model: LoadedModel, inputs: np.ndarray | None,
                  prepare: Callable[[], tuple[Any, np.ndarray]] | None = None, trusted: bool = True) -> Job:
        """Run prepared inputs (or `prepare`'s) from the event loop. Raises the request's fault as a
        RequestError (4xx), the engine's as EngineFailed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def done(job: Job) -> None:
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(job))

        self.submit(Job(model, inputs, prepare=prepare, done=done, trusted=trusted))
        job = await future
        if isinstance(job.error, RequestError):
            raise job.error
        if job.error is not None:
            raise EngineFailed(f"the engine failed: {type(job.error).__name__}: {job.error}") from job.error
        return job

    def run_blocking(self, model: LoadedModel, inputs: np.ndarray, cam: bool = False,
                     cancelled: Callable[[], bool] = lambda: False) -> Job:
        """Run from another thread (the stream); gives up waiting when `cancelled()` turns true."""
        finished = threading.Event()
        job = Job(model, inputs, cam=cam, done=lambda _: finished.set())
        self.submit(job)
        while not finished.wait(0.1):
            if cancelled() or self._stopping:
                raise RuntimeError("the service is stopping")
        if job.error is not None:
            raise job.error
        return job

    def _loop(self) -> None:
        while True:
            try:
                job = self._queue.get(timeout=self.probe_after)
            except queue.Empty:
                self._probe()
                continue
            if job is None:
                return
            self._run(job)

    def _probe(self) -> None:
        """After failures and `probe_after` seconds without work, try the engine on a blank picture: when it answers
        again, readiness returns without waiting for traffic that a not-ready server never gets."""
        model = self.current()
        if self.healthy or model is None:
            return
        self._known_good(model)

    def _run(self, job: Job) -> None:
        start = time.perf_counter()
        job.queue_ms = (start - job.submitted) * 1e3
        self.busy_since = start
        if job.prepare is not None:
            try:
                job.picture, job.inputs = job.prepare()
            except Exception as exc:  # noqa: BLE001 - the request's fault (not an image...), not the engine's
                job.error = exc
                self.busy_since = None
                if job.done is not None:
                    job.done(job)
                return
            job.decode_ms = (time.perf_counter() - start) * 1e3
            start = time.perf_counter()
        try:
            if job.cam:
                _run_cam(job)
            else:
                job.scores = _scores(job.model.clf, job.inputs)
            if not np.all(np.isfinite(job.scores)):
                raise ValueError("the model returned non-finite scores")
            self.failures = 0
        except Exception as exc:  # noqa: BLE001 - handed to the caller; counted for readiness on known-good inputs
            job.error = exc
            if job.trusted:
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            seconds = time.perf_counter() - start
            self.busy_since = None
            job.inference_ms = seconds * 1e3
            self.mean_seconds += 0.1 * (seconds - self.mean_seconds)
            self._observe(seconds)
        if job.error is not None and not job.trusted:
            self._blame(job)
        if job.done is not None:
            job.done(job)

    def _blame(self, job: Job) -> None:
        """A client's tensor failed: the engine answers a known-good input (a blank picture through the
        model's own preprocessing) — then the input was at fault (400, and readiness untouched); or it
        fails that too, which counts as the engine's failure (the probe's run counts it)."""
        if not self._known_good(job.model):
            return
        self.failures = 0
        lo, hi = _prepared_range(job.model.clf)
        values = np.asarray(job.inputs, dtype=np.float64)
        with np.errstate(all="ignore"):
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
        job.error = RequestError(400, f"this input tensor makes the model's outputs non-finite (NaN or infinity) or "
                                      f"fails it: its values run from {low:.3g} to {high:.3g}, where the model's "
                                      f"preprocessing makes {lo:.3g} to {hi:.3g}; send pixels prepared as the "
                                      "model's metadata (GET /v2/models/NAME) describes, or the picture as BYTES")

    def _known_good(self, model: LoadedModel) -> bool:
        try:
            inputs = model.clf.prepare(np.zeros((64, 64, 3), np.uint8))[None]
        except Exception:  # noqa: BLE001 - a model that cannot prepare a blank picture is not known to work
            return False
        probe = Job(model, inputs)
        self._run(probe)
        return probe.error is None


def _prepared_range(clf: Any) -> tuple[float, float]:
    """The smallest and largest input values the model's preprocessing makes (black and white pictures)."""
    prepared = [np.asarray(clf.prepare(np.full((8, 8, 3), v, np.uint8)), np.float64) for v in (0, 255)]
    return min(float(p.min()) for p in prepared), max(float(p.max()) for p in prepared)


def _scores(clf: Any, inputs: np.ndarray) -> np.ndarray:
    """Class probabilities (N, classes); a model with a fixed batch of one runs item by item."""
    if inputs.shape[0] > 1 and clf.engine.input.shape[0] == 1:
        return np.concatenate([clf.scores_from_inputs(inputs[i : i + 1]) for i in range(inputs.shape[0])])
    return clf.scores_from_inputs(inputs)


def _run_cam(job: Job) -> None:
    """One run of the explain artifact: probabilities and the last feature map together."""
    from ..runtime import softmax

    _, runner = job.model.cam()
    outs = runner.run(job.inputs[0])
    probs = outs.probabilities
    job.scores = (softmax(probs) if job.model.clf.output_activation == "none" else probs)[None]
    job.feature_map = outs.feature_map


class Admission:
    """At most `limit` requests inside the server's decode/queue/engine path at once."""

    def __init__(self, limit: int, worker: EngineWorker, on_reject: Callable[[], None] = lambda: None):
        self.limit, self.worker, self._on_reject = limit, worker, on_reject
        self.inside = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self.inside >= self.limit:
            self._on_reject()
            wait = max(1, math.ceil(self.limit * self.worker.mean_seconds))
            raise RequestError(503, f"busy: {self.inside} requests in progress (--queue-size {self.limit}); "
                                    f"retry in {wait} s", {"Retry-After": str(wait)})
        self.inside += 1  # only the event loop's thread touches the counter
        try:
            yield
        finally:
            self.inside -= 1
