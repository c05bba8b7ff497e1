"""`--watch DIR`: a model dropped into a folder (artifact + manifest) goes through the same
checks as an upload.

A file is looked at once it has held still for one pass (its size, times and inode unchanged:
a copy in progress is not hashed over and over), and each artifact is tried once per checksum.
One that does not match its manifest's checksum, or whose manifest is unusable, is refused with
one log line and skipped until it or its manifest changes (a 200 MB file is not re-hashed every
pass forever). Nothing outside DIR is read: a link is followed only when it resolves inside DIR
(the artifact, its manifest, check images and companions alike), and the files are copied from
those resolved paths without following a link put in their place meanwhile. The check images
its manifest lists (`<artifact>.checks/`) come along when present, and are waited for while some
are there but not all match their checksums (still being copied)."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from typing import Callable

from ..errors import EdgeclsError
from .models import SUFFIX_BY_FORMAT, ModelStore, UpdateBusy, UpdateRefused
from .update_check import staged_check_image


class Outside(EdgeclsError):
    """A watched file leads (through a link) outside the watched folder."""


def _stat_key(*paths: Path) -> tuple | None:
    """What changes when any of the files is written, replaced or renamed over; None when one is gone."""
    try:
        return tuple((s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino) for s in (p.stat() for p in paths))
    except OSError:
        return None


class FolderWatch:
    def __init__(self, folder: Path, store: ModelStore, log: Callable[[str], None], interval: float = 2.0):
        self.folder, self.store, self.log, self.interval = folder, store, log, interval
        self.root = folder.resolve()
        self._tried: set[tuple[str, str]] = set()
        self._waiting: set[tuple[str, str]] = set()
        self._seen: dict[str, tuple] = {}      # name -> its stat key at the last pass
        self._refused: dict[str, tuple] = {}   # name -> its stat key when it was refused
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="edgecls-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception as exc:  # noqa: BLE001 - a bad file must not end the watch
                self.log(f"--watch {self.folder}: {exc}")

    def inside(self, path: Path) -> Path:
        """`path` resolved, when that lies inside the watched folder; Outside otherwise."""
        real = path.resolve()
        if real != self.root and self.root not in real.parents:
            raise Outside(f"{path.name} leads outside {self.folder} (to {real}); a watched model is read only from "
                          "inside the folder")
        return real

    def scan(self) -> None:
        """Offer each new, complete artifact in the folder to the store once."""
        for path in sorted(self.folder.iterdir()):
            manifest_file = path.with_name(path.name + ".json")
            if path.suffix.lower() not in SUFFIX_BY_FORMAT.values() or not path.is_file() or not manifest_file.is_file():
                continue
            key = _stat_key(path, manifest_file)
            if key is None or self._seen.get(path.name) != key:  # new or changed: looked at when it holds still
                self._seen[path.name] = key
                continue
            if self._refused.get(path.name) == key:
                continue  # refused as it is: skipped until it or its manifest changes
            try:
                self._consider(path, manifest_file)
            except (Outside, _Refused) as exc:
                self._refused[path.name] = key
                self.log(f"--watch: {path.name} refused: {exc}; skipped until it or its manifest changes")

    def _consider(self, path: Path, manifest_file: Path) -> None:
        from ..files import sha256_file
        from ..manifest import load_manifest

        real = self.inside(path)
        self.inside(manifest_file)
        try:
            manifest = load_manifest(path)
        except EdgeclsError as exc:
            raise _Refused(f"its manifest is unusable: {exc}") from None
        if manifest is None or not manifest.artifact_sha256:
            raise _Refused("its manifest records no artifact_sha256 checksum")
        key = (path.name, manifest.artifact_sha256)
        if key in self._tried or not self._checks_ready(path, manifest, key):
            return
        if sha256_file(real) != manifest.artifact_sha256:
            raise _Refused("it does not match its manifest's checksum (a different or damaged file)")
        self._offer(path, key, manifest)

    def _checks_ready(self, path: Path, manifest, key: tuple[str, str]) -> bool:
        """None of the listed check images is there (the update is checked without them), or all are, whole."""
        from ..files import sha256_file

        images = [(self.inside(path.parent / c["image"]), c["sha256"]) for c in manifest.checks]
        present = [(p, sha) for p, sha in images if p.is_file()]
        if not present or (len(present) == len(images) and all(sha256_file(p) == sha for p, sha in present)):
            return True
        if key not in self._waiting:
            self._waiting.add(key)
            self.log(f"--watch: {path.name} waits for its check images: some are missing or differ from the "
                     "manifest's checksums (still being copied, or modified since export)")
        return False

    def _offer(self, path: Path, key: tuple[str, str], manifest) -> None:
        folder = self.store.new_folder()
        try:
            self._stage(path, folder, manifest)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        try:
            result = self.store.accept(folder, "watch")
            self._tried.add(key)
            self.log(f"--watch: {path.name} accepted as model v{result['model']['version']}"
                     + (f" (stored check images: {result['checks'].get('stored')})" if result.get("swapped") else
                        f": {result.get('note')}"))
        except UpdateBusy:
            return  # tried again next pass
        except UpdateRefused as exc:
            self._tried.add(key)
            self.log(f"--watch: {path.name} refused: {exc}; the current model keeps serving")

    def _stage(self, path: Path, folder: Path, manifest) -> None:
        """Copy the artifact and what belongs to it into `folder` under the server's names."""
        suffix = path.suffix.lower()
        self._copy(path, folder / f"model{suffix}")
        self._copy(path.with_name(path.name + ".json"), folder / f"model{suffix}.json")
        for k, check in enumerate(manifest.checks):
            if (path.parent / check["image"]).is_file():
                staged = staged_check_image(folder / f"model{suffix}", k, check["image"])
                staged.parent.mkdir(exist_ok=True)
                self._copy(path.parent / check["image"], staged)
        for extra in (".cam.npz",):
            if path.with_name(path.name + extra).is_file():
                self._copy(path.with_name(path.name + extra), folder / f"model{suffix}{extra}")
        if suffix == ".onnx":  # external data keeps its names: the model refers to the files by them
            from ..engines.onnx import check_external_data

            real = self.inside(path)
            for location in check_external_data(real, real.read_bytes()):
                (folder / location).parent.mkdir(parents=True, exist_ok=True)
                self._copy(path.parent / location, folder / location)
        if suffix == ".xml" and path.with_suffix(".bin").is_file():
            self._copy(path.with_suffix(".bin"), folder / "model.bin")
            _rename_companion(folder / "model.xml.json", path.with_suffix(".bin").name)

    def _copy(self, source: Path, target: Path) -> None:
        """Copy a file that resolves inside the folder, from its resolved path, refusing a link put there since."""
        real = self.inside(source)
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


class _Refused(EdgeclsError):
    """A watched file that cannot be a model as it is (refused until it changes)."""


def _rename_companion(manifest_file: Path, original: str) -> None:
    """Point an OpenVINO manifest's weights checksum at the server's name for the weights file."""
    import json

    from ..files import atomic_write_json

    data = json.loads(manifest_file.read_text(encoding="utf-8"))
    companions = data.get("companions") or {}
    if original in companions:
        companions["model.bin"] = companions.pop(original)
        data["companions"] = companions
        atomic_write_json(manifest_file, data)
