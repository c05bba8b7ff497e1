"""`--watch DIR`: a model dropped into a folder (artifact + manifest) goes through the same
checks as an upload. A file still being copied does not match its manifest's checksum yet and is
looked at again on the next pass; each artifact is tried once per checksum."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Callable

from ..errors import EdgeclsError
from .models import SUFFIX_BY_FORMAT, ModelStore, UpdateBusy, UpdateRefused


class FolderWatch:
    def __init__(self, folder: Path, store: ModelStore, log: Callable[[str], None], interval: float = 2.0):
        self.folder, self.store, self.log, self.interval = folder, store, log, interval
        self._tried: set[tuple[str, str]] = set()
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
            self._offer(path, key)

    def _offer(self, path: Path, key: tuple[str, str]) -> None:
        folder = self.store.new_folder()
        suffix = path.suffix.lower()
        shutil.copyfile(path, folder / f"model{suffix}")
        shutil.copyfile(path.with_name(path.name + ".json"), folder / f"model{suffix}.json")
        for extra in (".cam.npz",):
            if path.with_name(path.name + extra).is_file():
                shutil.copyfile(path.with_name(path.name + extra), folder / f"model{suffix}{extra}")
        if suffix == ".xml" and path.with_suffix(".bin").is_file():
            shutil.copyfile(path.with_suffix(".bin"), folder / "model.bin")
            _rename_companion(folder / "model.xml.json", path.with_suffix(".bin").name)
        try:
            result = self.store.accept(folder, "watch")
            self._tried.add(key)
            self.log(f"--watch: {path.name} accepted as model v{result['model']['version']}")
        except UpdateBusy:
            return  # tried again next pass
        except UpdateRefused as exc:
            self._tried.add(key)
            self.log(f"--watch: {path.name} refused: {exc}; the current model keeps serving")


def _rename_companion(manifest_file: Path, original: str) -> None:
    """Point an OpenVINO manifest's weights checksum at the server's name for the weights file."""
    import json

    from ..files import atomic_write_text

    data = json.loads(manifest_file.read_text(encoding="utf-8"))
    companions = data.get("companions") or {}
    if original in companions:
        companions["model.bin"] = companions.pop(original)
        data["companions"] = companions
        atomic_write_text(manifest_file, json.dumps(data, indent=2) + "\n")
