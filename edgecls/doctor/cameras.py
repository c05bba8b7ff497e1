"""Cameras: V4L2 capture devices (/dev/video*, read with VIDIOC_QUERYCAP) and Picamera2.

A camera is needed only when one is named (`--camera`, which the installer passes for a stream
service); otherwise a missing camera is a warning."""
from __future__ import annotations

import errno
import fcntl
import importlib.util
import os
import struct
from pathlib import Path
from typing import Any

from . import Finding, Request

VIDIOC_QUERYCAP = 0x80685600          # _IOR('V', 0, struct v4l2_capability), 104 bytes
_CAPTURE, _CAPTURE_MPLANE = 0x1, 0x1000
_M2M, _M2M_MPLANE, _DEVICE_CAPS = 0x8000, 0x4000, 0x80000000


def v4l2_devices(dev: str | Path = "/dev") -> list[dict[str, Any]]:
    """Every /dev/videoN with its driver, card name and whether it captures frames (codecs and ISPs
    on a Raspberry Pi are memory-to-memory devices, not cameras)."""
    found = []
    for path in sorted(Path(dev).glob("video*"), key=lambda p: (len(p.name), p.name)):
        found.append({"path": str(path), **querycap(path)})
    return found


def querycap(path: str | Path) -> dict[str, Any]:
    """VIDIOC_QUERYCAP of one device node: driver, card, capture; or the error that stopped it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        return {"error": exc.strerror or str(exc), "errno": exc.errno}
    try:
        raw = fcntl.ioctl(fd, VIDIOC_QUERYCAP, bytes(104))
    except OSError as exc:
        return {"error": f"not a V4L2 device ({exc.strerror})", "errno": exc.errno}
    finally:
        os.close(fd)
    driver, card = (raw[a:b].split(b"\0", 1)[0].decode(errors="replace") for a, b in ((0, 16), (16, 48)))
    caps, device_caps = struct.unpack_from("<II", raw, 84)
    caps = device_caps if caps & _DEVICE_CAPS else caps
    capture = bool(caps & (_CAPTURE | _CAPTURE_MPLANE)) and not caps & (_M2M | _M2M_MPLANE)
    return {"driver": driver, "card": card, "capture": capture}


def picamera2_cameras() -> tuple[list[dict[str, Any]] | None, str | None]:
    """(cameras libcamera lists, None), or (None, why Picamera2 cannot be asked)."""
    if importlib.util.find_spec("picamera2") is None:
        return None, "picamera2 is not importable"
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]

        return [dict(c) for c in Picamera2.global_camera_info()], None
    except Exception as exc:  # libcamera raises its own errors
        return None, f"picamera2 failed: {type(exc).__name__}: {exc}"


def check(request: Request, dev: str | Path = "/dev") -> list[Finding]:
    """The cameras present and, when one is named, that it opens and delivers a frame."""
    devices = v4l2_devices(dev)
    cameras = [d for d in devices if d.get("capture")]
    pi_cams, pi_error = picamera2_cameras()
    listed = [f"{d['path']} ({d['card']})" for d in cameras] + [f"picamera2:{i} ({c.get('Model', '?')})"
                                                              for i, c in enumerate(pi_cams or [])]
    summary = Finding("cameras", "present", "ok" if listed else "info",
                      ", ".join(listed) or "no camera found (V4L2 capture devices, Picamera2)",
                      data={"v4l2": devices, "picamera2": pi_cams, "picamera2_error": pi_error})
    if request.camera is None:
        if not listed:
            summary.status, summary.fix = "warn", ("needed only to stream from a camera: plug in a USB camera or "
                                                   "enable the camera module; `edgecls doctor --camera SOURCE` checks one")
        return [summary]
    return [summary, _named(request.camera, devices, pi_cams, pi_error, dev)]


def _named(source: str, devices: list[dict], pi_cams, pi_error, dev: str | Path) -> Finding:
    if source.startswith("picamera2"):
        index = int(source.split(":", 1)[1]) if ":" in source and source.split(":", 1)[1].isdigit() else 0
        if pi_cams is None:
            return Finding("cameras", source, "fail", pi_error or "picamera2 unavailable",
                           "install it with `sudo apt install python3-picamera2` and give the virtual environment "
                           "the system packages (install.sh --system-site-packages)")
        if index >= len(pi_cams):
            return Finding("cameras", source, "fail", f"libcamera lists {len(pi_cams)} camera(s), no camera {index}",
                           "check the ribbon cable and `rpicam-hello --list-cameras`; no camera was found")
        return Finding("cameras", source, "ok", f"libcamera lists {pi_cams[index].get('Model', 'a camera')}")
    path = Path(dev) / f"video{source}" if source.isdigit() else Path(source)
    if not str(path).startswith(str(Path(dev)) + "/video"):
        return Finding("cameras", source, "info", "not a camera device: the stream source is not checked here")
    return _open_v4l2(source, path, devices)


def _open_v4l2(source: str, path: Path, devices: list[dict]) -> Finding:
    present = ", ".join(d["path"] for d in devices if d.get("capture")) or "none"
    if not path.exists():
        return Finding("cameras", source, "fail", f"no camera: {path} does not exist (capture devices here: {present})",
                       "plug in the camera (USB) and check `ls /dev/video*`; a camera module on the ribbon connector "
                       "is read with source picamera2")
    info = querycap(path)
    if info.get("errno") in (errno.EACCES, errno.EPERM):
        return Finding("cameras", source, "fail", f"{path}: permission denied",
                       "add the user to the video group (`sudo usermod -aG video $USER`, then log in again); the "
                       "service unit sets SupplementaryGroups=video")
    if info.get("errno") == errno.EBUSY:
        return Finding("cameras", source, "fail", f"{path}: busy", "another process holds the camera: stop it "
                       "(`sudo fuser -v " + str(path) + "` shows which)")
    if "error" in info:
        return Finding("cameras", source, "fail", f"{path}: {info['error']}", "pick a capture device: " + present)
    if not info["capture"]:
        return Finding("cameras", source, "fail", f"{path} ({info['card']}) is not a capture device",
                       f"capture devices here: {present}")
    return _grab(source, path, info)


def _grab(source: str, path: Path, info: dict) -> Finding:
    """Open the device with OpenCV and read one frame, as the stream will."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_V4L2)
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
    finally:
        cap.release()
    if not ok or frame is None:
        return Finding("cameras", source, "fail", f"{path} ({info['card']}) opens but delivered no frame",
                       "another process may be streaming from it (only one can), or it needs a format OpenCV "
                       "cannot read (a camera module on the ribbon connector: use source picamera2)")
    return Finding("cameras", source, "ok", f"{path} ({info['card']}, {info['driver']}): "
                   f"frame {frame.shape[1]}x{frame.shape[0]}")
