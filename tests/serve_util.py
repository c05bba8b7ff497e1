"""A real `edgecls serve` process on 127.0.0.1 (an ephemeral port) for the tests, and manifests
for the shared models."""
from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"


class Server:
    def __init__(self, *args: str, token: str | None = TOKEN, timeout: float = 90.0, python: str | None = None,
                 cwd: Path = ROOT, open_files: int | None = None):
        """`python`: another environment's interpreter (an installed release), run from `cwd`
        without this checkout on its path; `open_files`: the server's RLIMIT_NOFILE (`ulimit -n`)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("EDGECLS_TOKEN", None)
        if python:
            env.pop("PYTHONPATH", None)
        if token:
            env["EDGECLS_TOKEN"] = token
        self.token = token
        self.proc = subprocess.Popen([python or sys.executable, "-m", "edgecls.cli", "serve", *map(str, args),
                                      "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env,
                                     preexec_fn=None if open_files is None else lambda: _limit_files(open_files))
        self.log: list[str] = []
        self._started = threading.Event()
        self.port = 0
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + timeout
        while not self._started.wait(0.1):
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise RuntimeError("edgecls serve did not start:\n" + "".join(self.log))

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            found = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
            if found and not self._started.is_set():
                self.port = int(found.group(1))
                self._started.set()

    def headers(self, auth: bool = True, **extra: str) -> dict[str, str]:
        return {**({"Authorization": f"Bearer {self.token}"} if auth and self.token else {}), **extra}

    def request(self, method: str, path: str, body: bytes | None = None, auth: bool = True,
                headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={**self.headers(auth), **(headers or {})})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body=None, **kwargs) -> tuple[int, dict]:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            kwargs.setdefault("headers", {"Content-Type": "application/json"})
        status, _, data = self.request(method, path, body, **kwargs)
        return status, json.loads(data)

    def wait_ready(self, want: bool, timeout: float = 20.0) -> float:
        start = time.time()
        while time.time() - start < timeout:
            if (self.request("GET", "/v2/health/ready", auth=False)[0] == 200) == want:
                return time.time() - start
            time.sleep(0.1)
        raise AssertionError(f"readiness did not become {want} within {timeout} s:\n" + "".join(self.log[-20:]))

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _limit_files(n: int) -> None:
    """In the server's process before it starts: `ulimit -n n` (soft and hard)."""
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


def coral_manifest(model: Path, labels: list[str], out: Path, name: str = "model.tflite") -> Path:
    """The Coral MobileNetV2 (uint8 in, softmax out) copied with an edgecls manifest beside it."""
    from edgecls.files import sha256_file
    from edgecls.manifest import Manifest
    from edgecls.preprocess import Preprocessing

    out.mkdir(parents=True, exist_ok=True)
    artifact = out / name
    shutil.copyfile(model, artifact)
    # Raw pixels are the model's input: its own quantization (scale 1/128, zero point 128) normalises.
    pre = Preprocessing(size=(224, 224), normalization="quantized-input", scale=1 / 128, mean=(1.0, 1.0, 1.0),
                        std=(1.0, 1.0, 1.0))
    Manifest(format="tflite", quantization="int8", labels=labels, preprocessing=pre,
             input={"shape": [1, 224, 224, 3], "dtype": "uint8"}, output={"activation": "softmax"},
             artifact_sha256=sha256_file(artifact)).save(artifact)
    return artifact


def onnx_manifest(model: Path, labels: list[str], out: Path) -> Path:
    """The ONNX-zoo MobileNetV2 int8 (ImageNet mean/std, resize then crop, logits) with a manifest."""
    from edgecls.files import sha256_file
    from edgecls.manifest import Manifest
    from edgecls.preprocess import Preprocessing

    out.mkdir(parents=True, exist_ok=True)
    artifact = out / "zoo.onnx"
    shutil.copyfile(model, artifact)
    Manifest(format="onnx", quantization="int8", labels=labels[1:],
             preprocessing=Preprocessing.named("torch", (224, 224), "center_crop"),
             output={"activation": "none"}, artifact_sha256=sha256_file(artifact)).save(artifact)
    return artifact


def multipart(fields: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (file name, bytes, content type)."""
    boundary = "edgeclstestboundary7d1"
    out = b""
    for name, (filename, data, ctype) in fields.items():
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


PHOTOS = ["parrot.jpg", "cat.bmp", "grace_hopper.bmp", "hot_dog.jpg", "bird.bmp", "dragonfly.bmp"]


@contextmanager
def serving(tmp_path_factory, assets: Path, coral: Path):
    """The Coral MobileNetV2 with a manifest, streaming a folder of the six ImageNet photos at 8 fps,
    keeping every frame to learn from (margin 1.0) and watching a folder for models."""
    tmp = tmp_path_factory.mktemp("serve")
    labels = (coral / "imagenet_labels.txt").read_text().splitlines()
    model = coral_manifest(coral / "mobilenet_v2_1.0_224_quant.tflite", labels, tmp / "model")
    photos, watched = tmp / "photos", tmp / "watched"
    photos.mkdir()
    watched.mkdir()
    for name in PHOTOS:
        shutil.copyfile(assets / "images/imagenet-photos" / name, photos / name)
    server = Server(model, photos, "--fps", "8", "--state-dir", tmp / "state", "--read-timeout", "1",
                    "--stale-after", "1.5", "--max-upload-mb", "8", "--queue-size", "6", "--learn", tmp / "learn",
                    "--learn-margin", "1.0", "--learn-per-minute", "30", "--learn-max-mb", "0.25", "--watch", watched)
    try:
        server.wait_ready(True)
        yield SimpleNamespace(server=server, model=model, photos=photos, learn=tmp / "learn", labels=labels, tmp=tmp,
                              watched=watched)
    finally:
        server.stop()


def photo_bytes(served) -> bytes:
    return (served.photos / "parrot.jpg").read_bytes()


def poll(condition, timeout: float = 15.0) -> None:
    """Wait until `condition()` is true; fail after `timeout` seconds."""
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "condition not met in time"
        time.sleep(0.1)
