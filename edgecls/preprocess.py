"""The one definition of image preprocessing.

Training, calibration, evaluation and the device runtime all call these functions, and the
parameters travel in each artifact's manifest, so a deployed model sees exactly the pixels it
was trained on. Only numpy and OpenCV are imported here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ImageError, OptionError

RESIZE_MODES = ("stretch", "center_crop")
# How pixels are resampled. "area": the box filter (cv2.INTER_AREA), anti-aliased when shrinking,
# the default and what a manifest without the field means (edgecls always low-passed before a
# shrink); "linear" / "cubic": one cv2.INTER_LINEAR / INTER_CUBIC step with no low-pass, like
# tf.image.resize (antialias=False) and TF-slim's bilinear evaluation, for models trained that way.
INTERPOLATIONS = ("area", "linear", "cubic")

# Named normalisations: value = (pixel * scale - mean) / std, per channel, after channel ordering.
NORMALIZATIONS: dict[str, dict[str, Any]] = {
    "tf": {"scale": 1 / 127.5, "mean": [1.0, 1.0, 1.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
    "torch": {
        "scale": 1 / 255.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "RGB",
    },
    "caffe": {
        "scale": 1.0,
        "mean": [103.939, 116.779, 123.68],
        "std": [1.0, 1.0, 1.0],
        "channel_order": "BGR",
    },
    "unit": {"scale": 1 / 255.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
    "raw": {"scale": 1.0, "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0], "channel_order": "RGB"},
}


@dataclass(frozen=True)
class Preprocessing:
    """How a picture becomes a model input: resize, channel order and normalisation."""

    size: tuple[int, int] = (224, 224)  # (height, width)
    normalization: str = "tf"
    resize: str = "stretch"
    crop_fraction: float = 0.875
    channel_order: str = "RGB"
    scale: float = 1 / 127.5
    mean: tuple[float, float, float] = (1.0, 1.0, 1.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "area"

    @classmethod
    def named(cls, normalization: str, size: Sequence[int], resize: str = "stretch",
              crop_fraction: float = 0.875, interpolation: str = "area") -> "Preprocessing":
        """A preprocessing from a named normalisation (tf, torch, caffe, unit, raw)."""
        if normalization not in NORMALIZATIONS:
            raise OptionError(
                f"unknown normalization {normalization!r}; expected one of {', '.join(NORMALIZATIONS)}"
            )
        check_resize(resize)
        check_interpolation(interpolation)
        if not 0 < crop_fraction <= 1:
            raise OptionError(f"crop_fraction must be in (0, 1], got {crop_fraction}")
        if len(size) != 2 or min(size) < 1:
            raise OptionError(f"size must be (height, width) with positive values, got {tuple(size)}")
        spec = NORMALIZATIONS[normalization]
        return cls(
            size=(int(size[0]), int(size[1])),
            normalization=normalization,
            resize=resize,
            crop_fraction=float(crop_fraction),
            channel_order=spec["channel_order"],
            scale=float(spec["scale"]),
            mean=tuple(float(v) for v in spec["mean"]),
            std=tuple(float(v) for v in spec["std"]),
            interpolation=interpolation,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        try:
            return cls(
                size=(int(d["size"][0]), int(d["size"][1])),
                normalization=str(d.get("normalization", "custom")),
                resize=str(d.get("resize", "stretch")),
                crop_fraction=float(d.get("crop_fraction", 0.875)),
                channel_order=str(d.get("channel_order", "RGB")),
                scale=float(d["scale"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                interpolation=str(d.get("interpolation", "area")),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise OptionError(f"invalid preprocessing description {d!r}: {exc}") from None

    # --- the pipeline -------------------------------------------------------------------
    def resize_image(self, rgb: np.ndarray) -> np.ndarray:
        """Resize an RGB uint8 picture to the model's input size (uint8 out)."""
        return resize_image(rgb, self.size, self.resize, self.crop_fraction, self.interpolation)

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """Map resized RGB pixels (uint8 or float 0..255, ...xHxWx3) to float32 model inputs."""
        x = np.asarray(pixels, dtype=np.float32)
        if self.channel_order == "BGR":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return ((x * np.float32(self.scale) - mean) / std).astype(np.float32)

    def load(self, path: str | Path) -> np.ndarray:
        """Decode and resize one image file (uint8 HxWx3 RGB)."""
        return self.resize_image(read_rgb(path))

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """RGB uint8 picture of any size -> float32 HxWx3 model input."""
        return self.normalize(self.resize_image(rgb))


def _cv2():
    import cv2  # OpenCV is a runtime dependency; imported lazily to keep `import edgecls` fast

    return cv2


def check_resize(mode: str) -> str:
    """`mode` if it is one of RESIZE_MODES, else an OptionError naming them."""
    if mode not in RESIZE_MODES:
        raise OptionError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    return mode


def check_interpolation(interpolation: str) -> str:
    """`interpolation` if it is one of INTERPOLATIONS, else an OptionError naming them."""
    if interpolation not in INTERPOLATIONS:
        raise OptionError(f"unknown interpolation {interpolation!r}; expected one of {', '.join(INTERPOLATIONS)}")
    return interpolation


def resize_image(rgb: np.ndarray, size: Sequence[int], mode: str = "stretch",
                 crop_fraction: float = 0.875, interpolation: str = "area") -> np.ndarray:
    """Resize (stretch) or center-crop-then-resize an RGB picture to (height, width).

    A picture already at the target size is returned unchanged in either mode, so applying this
    twice (a dataset loader, then the runtime) gives the same pixels as applying it once.
    """
    cv2 = _cv2()
    h, w = int(size[0]), int(size[1])
    check_resize(mode)
    check_interpolation(interpolation)
    if rgb.shape[0] == h and rgb.shape[1] == w:
        return rgb
    flipped = rgb[..., ::-1]
    if rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.strides[-1] < 0 and flipped.strides[-2:] == (3, 1):
        # A channel-reversed view (an OpenCV BGR frame flipped without a copy): copying it whole
        # costs more than the resize. Resizing treats each channel alike, so resize the original
        # and swap the channels of the small result: the same pixels.
        return cv2.cvtColor(resize_image(flipped, size, mode, crop_fraction, interpolation), cv2.COLOR_RGB2BGR)
    if mode == "center_crop":
        rgb = center_window(rgb, h / w, crop_fraction)
    return _resize(cv2, rgb, h, w, interpolation)


def center_window(rgb: np.ndarray, aspect: float, crop_fraction: float) -> np.ndarray:
    """The centred window with the target's aspect ratio (height / width), `crop_fraction` of
    the largest such window: what resize-then-crop would keep, cut before resizing."""
    src_h, src_w = rgb.shape[:2]
    win_w = min(src_w, src_h / aspect) * crop_fraction
    win_h, win_w = max(1, round(win_w * aspect)), max(1, round(win_w))
    top, left = (src_h - win_h) // 2, (src_w - win_w) // 2
    return rgb[top : top + win_h, left : left + win_w]


def _resize(cv2, rgb: np.ndarray, h: int, w: int, interpolation: str = "area") -> np.ndarray:
    """Resample to exactly (h, w) with the named interpolation (see INTERPOLATIONS).

    "area" shrinks with one cv2.INTER_AREA step, the exact box filter: ~0.2-0.8 ms CPU for a
    640x480 frame to 128-224 px, ~4 ms for 1920x1080. The cheaper paths measured against it all
    cost accuracy or fidelity (bench/results/preprocess_accuracy.md): pyrDown halvings then a
    bilinear step of up to 2x aliased (top-1 fell 1-4 points, issue 15); pyrDown or whole-block
    averaging down to 2-4x before INTER_AREA drifted 2-5 grey levels on average from it on the
    shared photos, for at most halving the time on frames above 640x480.
    """
    if rgb.shape[0] == h and rgb.shape[1] == w:
        return np.ascontiguousarray(rgb)
    rgb = np.ascontiguousarray(rgb)
    if interpolation != "area":
        flag = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_CUBIC
        return cv2.resize(rgb, (w, h), interpolation=flag)
    src_h, src_w = rgb.shape[:2]
    if src_h < h or src_w < w:
        # OpenCV's INTER_AREA box-filters only when both directions shrink; otherwise it is close
        # to nearest-neighbour. So shrink the direction that shrinks with it, enlarge bilinearly.
        if src_h > h or src_w > w:
            rgb = cv2.resize(rgb, (min(w, src_w), min(h, src_h)), interpolation=cv2.INTER_AREA)
        return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)


def decode_rgb(data: bytes | np.ndarray, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to an 8-bit RGB HxWx3 array, turned as its EXIF orientation says.

    Grayscale, RGBA (composited on white) and 16-bit images are converted; anything that is not
    a decodable image raises ImageError naming `name`. The orientation rule is the same for every
    format: OpenCV applies it to JPEG (IMREAD_COLOR) and TIFF; PNG (read unchanged, for its alpha)
    and WebP come unturned, so their EXIF orientation is read here and applied the same way.
    """
    cv2 = _cv2()
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise ImageError(f"{name}: empty file, expected an image (JPEG, PNG, BMP, ...)")
    is_jpeg = buf.size > 2 and buf[0] == 0xFF and buf[1] == 0xD8
    # JPEGs are always 8-bit without alpha; IMREAD_COLOR also applies their EXIF orientation.
    flags = cv2.IMREAD_COLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error:
        img = None
    if img is None or img.size == 0:
        raise ImageError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    rgb = to_rgb8(img, name, bgr=True)
    return rgb if is_jpeg else orient(rgb, exif_orientation(buf))  # buf: no copy of the file


def to_rgb8(img: np.ndarray, name: str = "<array>", bgr: bool = False) -> np.ndarray:
    """Convert a decoded picture (gray, BGR/RGB, BGRA/RGBA, 8/16-bit or float) to RGB uint8."""
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype in (np.float32, np.float64):
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise ImageError(f"{name}: unsupported pixel type {img.dtype}, expected 8- or 16-bit")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise ImageError(f"{name}: unsupported image shape {img.shape}, expected gray, RGB or RGBA")
    channels = img.shape[2]
    if channels == 1:
        return np.ascontiguousarray(np.repeat(img, 3, axis=2))
    if channels == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        color = img[:, :, :3].astype(np.float32)
        img = (color * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    else:
        img = img[:, :, :3]
    if bgr:
        img = img[:, :, ::-1]
    return np.ascontiguousarray(img)


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as 8-bit RGB; raises ImageError naming the file on any failure."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    return decode_rgb(data, str(path))


def exif_orientation(data: bytes | np.ndarray) -> int:
    """The EXIF orientation (1-8) a PNG (eXIf chunk) or WebP (EXIF chunk) carries; 1 when it has
    none, or for other formats (OpenCV turns JPEG and TIFF itself)."""
    raw = memoryview(np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data).cast("B")
    head = bytes(raw[:12])
    try:
        if head.startswith(b"\x89PNG\r\n\x1a\n"):
            return _tiff_orientation(_png_chunk(raw, b"eXIf"))
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _tiff_orientation(_riff_chunk(raw, b"EXIF"))
    except (IndexError, ValueError):
        pass  # a damaged EXIF block: the picture as stored
    return 1


def _png_chunk(raw: memoryview, kind: bytes) -> bytes:
    i = 8
    while i + 8 <= len(raw):
        length = int.from_bytes(raw[i : i + 4], "big")
        if raw[i + 4 : i + 8] == kind:
            return bytes(raw[i + 8 : i + 8 + length])
        if raw[i + 4 : i + 8] == b"IEND":
            break
        i += 12 + length
    return b""


def _riff_chunk(raw: memoryview, kind: bytes) -> bytes:
    i = 12
    while i + 8 <= len(raw):
        length = int.from_bytes(raw[i + 4 : i + 8], "little")
        if raw[i : i + 4] == kind:
            return bytes(raw[i + 8 : i + 8 + length])
        i += 8 + length + (length & 1)
    return b""


def _tiff_orientation(exif: bytes) -> int:
    """Tag 0x0112 of IFD0 of an EXIF (TIFF-structured) block; 1 when absent or out of range."""
    exif = exif.removeprefix(b"Exif\0\0")
    order = {b"II": "little", b"MM": "big"}.get(exif[:2])
    if order is None:
        return 1
    ifd = int.from_bytes(exif[4:8], order)
    for k in range(int.from_bytes(exif[ifd : ifd + 2], order)):
        entry = exif[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if int.from_bytes(entry[0:2], order) == 0x0112:
            value = int.from_bytes(entry[8:10], order)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a picture as EXIF orientation 1-8 says (the transforms OpenCV applies to JPEG)."""
    if orientation in (5, 6, 7, 8):
        rgb = rgb.transpose(1, 0, 2)
    flips = {2: (slice(None), slice(None, None, -1)), 3: (slice(None, None, -1), slice(None, None, -1)),
             4: (slice(None, None, -1),), 6: (slice(None), slice(None, None, -1)),
             7: (slice(None, None, -1), slice(None, None, -1)), 8: (slice(None, None, -1),)}.get(orientation)
    if flips:
        rgb = rgb[flips]
    return rgb if orientation in (1, 0) else np.ascontiguousarray(rgb)


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def is_image_name(path: str | Path) -> bool:
    """Whether a file's name makes it a photo of a dataset, calibration or stream folder: an image
    suffix, and not hidden (macOS `._x.jpg` resource forks, `.x.jpg` partial downloads). The one
    rule for every folder of images (Thumbs.db, notes.txt and the like are not members)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


__all__ = [
    "Preprocessing",
    "NORMALIZATIONS",
    "RESIZE_MODES",
    "INTERPOLATIONS",
    "check_interpolation",
    "check_resize",
    "decode_rgb",
    "read_rgb",
    "resize_image",
    "to_rgb8",
    "is_image_name",
]
