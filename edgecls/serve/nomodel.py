"""`edgecls serve --collect DIR SOURCE` without a model: the live page shows the camera, and photos
are collected and labelled, before any model exists. The engine thread idles, the stream skips
the model stages, and every route that needs a model answers 409 saying why."""
from __future__ import annotations

from typing import Any

import numpy as np

from .images import RequestError
from .live import LiveFeed, ServeStream

NO_MODEL = ("this server has no model yet (started with --collect and no ARTIFACT): it collects and labels photos; "
            "train one, then restart serve with it")


class NoModel:
    """Stands where the serving model would: says what it is, refuses to be run."""

    version = "none"
    sha256 = ""
    labels: list[str] = []
    cam_available = False
    origin = "none"

    @property
    def clf(self) -> Any:
        raise RequestError(409, NO_MODEL)

    def describe(self) -> dict[str, Any]:
        return {"version": "none", "sha256": "", "file": None, "origin": "none", "format": None, "quantization": None,
                "engine": None, "classes": 0, "cam": False, "collect_only": True}


class NoModelStore:
    """The model store of a server without a model: `current` is NoModel, updates are refused."""

    current = NoModel()
    previous = None

    def __getattr__(self, name: str) -> Any:  # new_folder, accept, rollback, ...: no model to update
        raise RequestError(409, NO_MODEL)


class PreviewStream(ServeStream):
    """The stream without the model stages: frames go straight to the live view."""

    def prepare_frame(self, frame) -> None:
        frame.extras["model"] = self.feed.store.current

    def infer_frame(self, frame) -> None:
        frame.scores, frame.labels = np.ones(1, np.float32), [""]


class CollectFeed(LiveFeed):
    stream_class = PreviewStream

    def classifier(self) -> Any:
        return None

    def _on_result(self, frame, top: list) -> None:
        super()._on_result(frame, [])  # no answer to show


def open_collect_only(svc: Any, loop: Any) -> None:
    """`Service.open` for a server without a model."""
    svc.store = NoModelStore()
    svc.worker.start()  # idle, but its liveness is what /v2/health/live reports
    svc.feed = CollectFeed(svc.cfg, svc.store, svc.worker, loop, svc.log)
    svc.feed.start()
