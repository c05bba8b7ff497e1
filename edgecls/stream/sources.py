"""Stream sources: cameras, video files, URLs and GStreamer pipelines through OpenCV, Picamera2,
and image folders; the Frame that travels down the pipeline.

Live sources (cameras, URLs, GStreamer pipelines, Picamera2) never make inference work on a
stale frame: OpenCV's driver buffer is shrunk to one frame where the backend allows it (the
pipeline's capture thread then keeps only the newest frame). Files and image folders are not
live: every frame is processed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..console import redact
from ..errors import EdgeclsError, ImageError
from ..preprocess import is_image_name, read_rgb

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
        # What is printed of the source: a URL's password never reaches a log or a status page.
        self.description = f"camera {spec}" if self.is_camera else redact(spec)
        self._first = None
        # FFmpeg's own complaints ("moov atom not found") would precede ours; ours name the file.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
        if not self._open():
            if self.finite:
                raise SourceError(f"{self.description}: not a video OpenCV can open (not a video file, corrupt, or a codec "
                                  "this OpenCV build lacks)")
            raise SourceError(f"{self.description}: cannot open this video source (no such camera, file or stream)")
        if self.finite:
            # Some backends "open" any file; a video file must yield a frame to count as one.
            ok, bgr = self._cap.read()
            if not ok or bgr is None or bgr.size == 0:
                self._cap.release()
                raise SourceError(f"{self.description}: no video frame could be decoded (not a video file, or a codec "
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
        raise SourceError(f"{redact(spec)}: no such file, folder or camera")
    return OpenCVSource(spec)
