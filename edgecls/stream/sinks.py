"""Stream sinks: JSON lines, an annotated video file, a window. A sink is called with each
classified frame and its top-k, and closed (flushed) when the stream ends."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .sources import Frame, SourceError

class JsonLinesSink:
    """One JSON object per result: timestamp, frame number, top-k, latencies."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout

    def __call__(self, frame: Frame, top: list[tuple[str, float]]) -> None:
        record = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "frame": frame.index,
                  "name": frame.name or None, "top_k": [[label, round(score, 6)] for label, score in top],
                  "latency_ms": {k: round(v, 3) for k, v in frame.timings.items()}}
        self.stream.write(json.dumps(record, allow_nan=False) + "\n")  # scores are finite (runtime checks)

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
