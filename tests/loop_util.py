"""Helpers of the loop tests (collect, label, pull, push): videos made from the real photos, model
artifacts with check images, and a loopback TCP proxy that cuts a transfer in the middle."""
from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path

from serve_util import coral_manifest


def make_video(path: Path, photos: list[Path], size=(800, 600), fps: float = 10.0, repeat: int = 4) -> Path:
    """A video (OpenCV's VideoWriter, MJPG) of real photos, each shown `repeat` frames."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for photo in photos:
        image = cv2.imread(str(photo))
        if image is not None:
            for _ in range(repeat):
                writer.write(cv2.resize(image, size))
    writer.release()
    return path


def imagenet_photos(assets: Path) -> list[Path]:
    return sorted(p for p in (assets / "images/imagenet-photos").iterdir() if p.suffix in (".jpg", ".bmp"))


def coral_pair(coral: Path, assets: Path, out: Path) -> tuple[Path, Path]:
    """Two real ImageNet models with manifests and stored check images: v1 MobileNetV1 0.25 at
    128 px (`edgecls export`'s layout), v2 MobileNetV2 at 224 px; they disagree on some photos."""
    from edgecls.check_images import write_checks
    from edgecls.manifest import Manifest, load_manifest
    from edgecls.preprocess import Preprocessing, read_rgb
    from edgecls.runtime import Classifier
    from edgecls.files import sha256_file

    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    v2 = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, out / "v2")
    v1_dir = out / "v1"
    v1_dir.mkdir(parents=True, exist_ok=True)
    v1 = v1_dir / "model.tflite"
    shutil.copyfile(coral / "mobilenet_v1_0.25_128_quant.tflite", v1)
    pre = Preprocessing(size=(128, 128), normalization="quantized-input", scale=1 / 128, mean=(1.0, 1.0, 1.0),
                        std=(1.0, 1.0, 1.0))
    Manifest(format="tflite", quantization="int8", labels=labels, preprocessing=pre,
             input={"shape": [1, 128, 128, 3], "dtype": "uint8"}, output={"activation": "softmax"},
             artifact_sha256=sha256_file(v1)).save(v1)
    pictures = [read_rgb(p) for p in imagenet_photos(assets)]
    for artifact in (v1, v2):
        manifest = load_manifest(artifact)
        manifest.checks, _ = write_checks(artifact, Classifier.from_artifact(artifact), pictures)
        manifest.save(artifact)
    return v1, v2


class CuttingProxy:
    """127.0.0.1:port -> the target port; the first `cuts` responses to a request whose path starts
    with `prefix` are cut after `after` bytes (both sides closed), as a dropped Wi-Fi link would."""

    def __init__(self, target: int, prefix: bytes, after: int, cuts: int = 1):
        self.target, self.prefix, self.after, self.cuts = target, prefix, after, cuts
        self.cut = 0
        self.requests: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.server = server
        ready.set()
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.close()
            return
        budget: list = [None]  # bytes of response still let through once a cut is armed

        async def requests():
            try:
                while data := await reader.read(65536):
                    self.requests.append(data)
                    if b"GET " + self.prefix in data and self.cut < self.cuts:  # keep-alive: any request on it
                        self.cut += 1
                        budget[0] = self.after
                    up_writer.write(data)
                    await up_writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                up_writer.close()

        async def responses():
            try:
                while data := await up_reader.read(65536):
                    if budget[0] is not None and len(data) >= budget[0]:
                        writer.write(data[: budget[0]])
                        await writer.drain()
                        break
                    if budget[0] is not None:
                        budget[0] -= len(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()
                up_writer.close()

        await asyncio.gather(requests(), responses())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
