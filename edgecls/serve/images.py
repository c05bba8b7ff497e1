"""Request images: the content type is decided by decoding, never by a header, and the picture's
size is read from its header before a single pixel is decoded (a 20000x20000 PNG is a few hundred
bytes on the wire and 1.2 GB decoded)."""
from __future__ import annotations

import io
import os

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


def decode_upload(data: bytes, max_pixels: int, what: str = "the image") -> np.ndarray:
    """Request bytes -> RGB uint8 picture, exactly as `edgecls predict` decodes a file; 400 for
    bytes that are not an image, 413 for a picture over the pixel limit."""
    if not data:
        raise RequestError(400, f"{what} is empty; send the image bytes")
    fmt, width, height = picture_size(data)
    if width * height > max_pixels:
        raise RequestError(413, f"{what} is {width}x{height} ({width * height / 1e6:.1f} MP); this server "
                                f"decodes at most {max_pixels / 1e6:g} MP (--max-pixels)")
    from ..preprocess import decode_rgb

    try:
        return decode_rgb(data, what)
    except ImageError as exc:
        raise RequestError(400, f"{exc} (header says {fmt} {width}x{height})") from None


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
