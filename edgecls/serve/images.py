"""Request images: the content type is decided by decoding, never by a header, and the picture's
size is read from its header before a single pixel is decoded (a 20000x20000 PNG is a few hundred
bytes on the wire and 1.2 GB decoded).

Memory: a picture is decoded, prepared for the model and dropped before the next one of the same
request (only the model input and, when asked, a copy 320 pixels on its longer side outlive it), and all requests
together decode at most `DecodeBudget` pixels at once: 16 pictures of 25 MP in one request used to
be held whole until the batch ran (1.2 GB), four such requests 4.8 GB.
"""
from __future__ import annotations

import io
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from ..errors import EdgeclsError, ImageError


class RequestError(EdgeclsError):
    """A request the server refuses: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def cap_opencv_pixels(max_pixels: int) -> None:
    """Second guard under the header check: OpenCV's own decoder limit, read once when cv2 loads
    (so only effective when it has not been imported yet)."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(max(int(max_pixels), 1)))


def picture_size(data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from an image's header, decoding no pixels (Pillow reads headers lazily)."""
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = None  # the caller applies its own limit, with a clearer answer
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(img.format), int(img.size[0]), int(img.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(400, "the body is not an image (expected JPEG, PNG, BMP, WebP, GIF, TIFF or PPM "
                                "bytes)") from None


class DecodeBudget:
    """Pixels decoded at once by all requests together (decode threads and the engine thread): a
    picture waits until its pixels fit; one larger than the whole budget waits until it is alone."""

    def __init__(self, pixels: int):
        self.pixels = max(1, int(pixels))
        self.used = 0
        self._free = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(int(pixels), self.pixels)
        with self._free:
            self._free.wait_for(lambda: self.used + pixels <= self.pixels)
            self.used += pixels
        try:
            yield
        finally:
            with self._free:
                self.used -= pixels
                self._free.notify_all()


def _checked_size(data: bytes, max_pixels: int, what: str) -> tuple[str, int, int]:
    if not data:
        raise RequestError(400, f"{what} is empty; send the image bytes")
    fmt, width, height = picture_size(data)
    if width * height > max_pixels:
        raise RequestError(413, f"{what} is {width}x{height} ({width * height / 1e6:.1f} MP); this server "
                                f"decodes at most {max_pixels / 1e6:g} MP (--max-pixels)")
    return fmt, width, height


def _decode(data: bytes, what: str, fmt: str, width: int, height: int) -> np.ndarray:
    from ..preprocess import decode_rgb

    try:
        return decode_rgb(data, what)
    except ImageError as exc:
        raise RequestError(400, f"{exc} (header says {fmt} {width}x{height})") from None


def prepare_upload(data: bytes, max_pixels: int, budget: DecodeBudget, prepare: Callable[[np.ndarray], np.ndarray],
                   what: str = "the image", keep: int = 0) -> tuple[np.ndarray | None, np.ndarray]:
    """Request bytes -> (a copy at most `keep` pixels on its longer side, or None when 0; the model
    input), decoding as `edgecls predict` does; 400 for bytes that are not an image, 413 for a
    picture over the pixel limit. The full-size picture exists only while `budget` holds its
    pixels, and is dropped before returning."""
    fmt, width, height = _checked_size(data, max_pixels, what)
    with budget.hold(width * height):
        rgb = _decode(data, what, fmt, width, height)
        inputs = prepare(rgb)
        small = _within(rgb, keep) if keep else None
        del rgb
    return small, inputs


def _within(rgb: np.ndarray, side: int) -> np.ndarray:
    """A copy (never a view) scaled down to at most `side` pixels on its longer side."""
    import cv2

    h, w = rgb.shape[:2]
    if max(h, w) <= side:
        return rgb.copy()
    scale = side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """RGB picture -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ImageError("could not encode a frame as JPEG")
    return buf.tobytes()


def fit_width(rgb: np.ndarray, width: int) -> np.ndarray:
    """Scale a picture down to at most `width` pixels wide (never up)."""
    import cv2

    h, w = rgb.shape[:2]
    if w <= width:
        return rgb
    return cv2.resize(rgb, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
