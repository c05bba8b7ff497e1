"""`--watch DIR`: a model dropped into a folder (artifact + manifest) goes through the same
checks as an upload. A file still being copied does not match its manifest's checksum yet and is
looked at again on the next pass; each artifact is tried once per checksum. The check images its
manifest lists (`<artifact>.checks/`) come along when present, and are waited for while some are
there but not all match their checksums (still being copied)."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Callable

from ..errors import EdgeclsError
from .models import SUFFIX_BY_FORMAT, ModelStore, UpdateBusy, UpdateRefused
from .update_check import staged_check_image


class FolderWatch:
    def __init__(self, folder: Path, store: ModelStore, log: Callable[[str], None], interval: float = 2.0):
        self.folder, self.store, self.log, self.interval = folder, store, log, interval
        self._tried: set[tuple[str, str]] = set()
        self._waiting: set[tuple[str, str]] = set()
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

    def scan(self) -> None:
        """Offer each new, complete artifact in the folder to the store once."""
        from ..files import sha256_file
        from ..manifest import load_manifest

        for path in sorted(self.folder.iterdir()):
            if path.suffix.lower() not in SUFFIX_BY_FORMAT.values() or not path.with_name(path.name + ".json").is_file():
                continue
            try:
                manifest = load_manifest(path)
            except EdgeclsError:
                continue  # perhaps half-written; looked at again next pass
            key = (path.name, manifest.artifact_sha256 if manifest else "")
            if manifest is None or key in self._tried or sha256_file(path) != manifest.artifact_sha256:
                continue
            if not self._checks_ready(path, manifest, key):
                continue
            self._offer(path, key, manifest)

    def _checks_ready(self, path: Path, manifest, key: tuple[str, str]) -> bool:
        """None of the listed check images is there (the update is checked without them), or all are, whole."""
        from ..files import sha256_file

        images = [(path.parent / c["image"], c["sha256"]) for c in manifest.checks]
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
            self.log(f"--watch: {path.name} accepted as model v{result['model']['version']} (stored check images: "
                     f"{result['checks'].get('stored')})")
        except UpdateBusy:
            return  # tried again next pass
        except UpdateRefused as exc:
            self._tried.add(key)
            self.log(f"--watch: {path.name} refused: {exc}; the current model keeps serving")

    @staticmethod
    def _stage(path: Path, folder: Path, manifest) -> None:
        """Copy the artifact and what belongs to it into `folder` under the server's names."""
        suffix = path.suffix.lower()
        shutil.copyfile(path, folder / f"model{suffix}")
        shutil.copyfile(path.with_name(path.name + ".json"), folder / f"model{suffix}.json")
        for k, check in enumerate(manifest.checks):
            if (path.parent / check["image"]).is_file():
                staged = staged_check_image(folder / f"model{suffix}", k, check["image"])
                staged.parent.mkdir(exist_ok=True)
                shutil.copyfile(path.parent / check["image"], staged)
        for extra in (".cam.npz",):
            if path.with_name(path.name + extra).is_file():
                shutil.copyfile(path.with_name(path.name + extra), folder / f"model{suffix}{extra}")
        if suffix == ".onnx":  # external data keeps its names: the model refers to the files by them
            from ..engines.onnx import check_external_data

            for location in check_external_data(path, path.read_bytes()):
                (folder / location).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path.parent / location, folder / location)
        if suffix == ".xml" and path.with_suffix(".bin").is_file():
            shutil.copyfile(path.with_suffix(".bin"), folder / "model.bin")
            _rename_companion(folder / "model.xml.json", path.with_suffix(".bin").name)


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
