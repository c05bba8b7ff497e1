"""Model updates: stage, checksum, open, run the check images the update brought, check against
the current model, swap — or refuse and keep serving — and rollback.

Files live under STATE_DIR/models/v<N>/ with names the server chose (model.tflite, model.tflite.json,
...): nothing a request says becomes a path. `active.json` records the current and previous
models, written atomically, so a restart resumes the last accepted update (only while the command
line still names the same artifact as when it was accepted).
"""
from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EdgeclsError
from .update_check import check_model, load_check_images, run_stored_checks
from .config import ServeConfig
from .engine import EngineWorker, LoadedModel, open_model

SUFFIX_BY_FORMAT = {"tflite": ".tflite", "onnx": ".onnx", "openvino": ".xml"}


class UpdateRefused(EdgeclsError):
    """A new model was not swapped in; the current one keeps serving."""

    def __init__(self, reason: str, checks: dict | None = None):
        super().__init__(reason)
        self.checks = checks or {}


class UpdateBusy(EdgeclsError):
    """Another update is being checked."""


class ModelStore:
    """The serving model, the one before it, and the only code that changes them."""

    def __init__(self, cfg: ServeConfig, worker: EngineWorker, recent: Callable[[], list[np.ndarray]],
                 log: Callable[[str], None], on_change: Callable[[LoadedModel], None] = lambda m: None):
        self.cfg, self.worker, self.recent, self.log, self.on_change = cfg, worker, recent, log, on_change
        self.root = cfg.state_dir / "models"
        self.current: LoadedModel | None = None
        self.previous: dict[str, Any] | None = None
        self._next_version = 1
        self._base_sha = ""
        self._update = threading.Lock()
        self._check_images: list[np.ndarray] | None = None

    # --- start ---------------------------------------------------------------------
    def start(self) -> LoadedModel:
        """Open the command line's artifact, or resume the last accepted update (see module doc)."""
        from ..files import sha256_file

        self.root.mkdir(parents=True, exist_ok=True)
        for folder in self.root.glob("incoming-*"):  # uploads cut short by a killed process
            shutil.rmtree(folder, ignore_errors=True)
        state = self._read_state()
        self._base_sha = sha256_file(self.cfg.artifact)
        self._next_version = int(state.get("next_version", 1))
        saved = state.get("current") or {}
        if self.cfg.resume and saved.get("base_sha256") == self._base_sha and saved.get("sha256") != self._base_sha:
            try:
                model = open_model(Path(saved["path"]), int(saved["version"]), "resumed", self.cfg.engine_options)
                self.log(f"resuming model v{model.version} accepted earlier ({model.path}); --no-resume serves "
                         f"{self.cfg.artifact} instead")
                self.previous = state.get("previous")
                return self._publish(model, keep_previous=False)
            except (EdgeclsError, OSError, KeyError, ValueError) as exc:
                self.log(f"cannot resume the saved model ({exc}); serving {self.cfg.artifact}")
        model = open_model(self.cfg.artifact, self._take_version(), "command line", self.cfg.engine_options,
                           self.cfg.labels)
        return self._publish(model, keep_previous=False)

    def _take_version(self) -> int:
        version, self._next_version = self._next_version, self._next_version + 1
        return version

    def _read_state(self) -> dict[str, Any]:
        path = self.cfg.state_dir / "active.json"
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        from ..files import atomic_write_json

        cur = self.current
        state = {"next_version": self._next_version, "previous": self.previous,
                 "current": {"path": str(cur.path.resolve()), "version": cur.version, "sha256": cur.sha256,
                             "origin": cur.origin, "base_sha256": self._base_sha}}
        atomic_write_json(self.cfg.state_dir / "active.json", state)
        keep = {Path(m["path"]).parent.name for m in (state["current"], self.previous or {}) if m.get("path")}
        for folder in self.root.iterdir():  # accepted models no longer current or previous
            if folder.is_dir() and folder.name.startswith("v") and folder.name not in keep:
                shutil.rmtree(folder, ignore_errors=True)

    def _publish(self, model: LoadedModel, keep_previous: bool = True) -> LoadedModel:
        old = self.current
        if keep_previous and old is not None:
            self.previous = {"path": str(old.path.resolve()), "version": old.version, "sha256": old.sha256,
                             "origin": old.origin}
        self.current = model  # one reference assignment: the next job takes the new model whole
        self._write_state()
        self.on_change(model)
        return model

    # --- updates -------------------------------------------------------------------
    def new_folder(self) -> Path:
        """An empty folder for an incoming model, named by the server."""
        folder = self.root / f"incoming-{time.time_ns()}"
        folder.mkdir(parents=True)
        return folder

    def accept(self, folder: Path, origin: str) -> dict[str, Any]:
        """Check the model in `folder` (named model.<ext> + manifest) and swap it in, or refuse it."""
        if not self._update.acquire(blocking=False):
            shutil.rmtree(folder, ignore_errors=True)
            raise UpdateBusy("another model update is being checked; try again when it is done")
        try:
            return self._accept(folder, origin)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self._update.release()

    def _accept(self, folder: Path, origin: str) -> dict[str, Any]:
        from ..manifest import load_manifest

        artifacts = [p for p in folder.iterdir() if p.suffix in SUFFIX_BY_FORMAT.values()]
        if len(artifacts) != 1:
            raise UpdateRefused("expected one model file (.tflite, .onnx or .xml) with its manifest")
        try:
            manifest = load_manifest(artifacts[0])
        except EdgeclsError as exc:
            raise UpdateRefused(f"its manifest is unusable: {exc}") from None
        if manifest is None or not manifest.artifact_sha256:
            raise UpdateRefused("its manifest is missing or records no artifact_sha256 checksum; send the manifest "
                                "that `edgecls export` wrote beside the artifact")
        version = self._next_version
        final = self.root / f"v{version}-{time.time_ns()}"
        folder.rename(final)
        try:
            model = open_model(final / artifacts[0].name, version, origin, self.cfg.engine_options)
        except Exception as exc:  # noqa: BLE001 - whatever the engine says, the model is refused
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRefused(f"it does not open: {exc}") from None
        try:
            stored, failed = run_stored_checks(model.path, manifest, model.clf)
        except Exception as exc:  # noqa: BLE001 - an engine failure on a check image refuses the model
            stored, failed = {"stored": "failed to run"}, f"it failed to run: {type(exc).__name__}: {exc}"
        if failed:
            shutil.rmtree(final, ignore_errors=True)
            self.log(f"model update ({origin}) refused: its stored check images answer differently than at "
                     f"export: {failed}")
            raise UpdateRefused(f"its stored check images answer differently than at export: {failed}",
                                {"ok": False, **stored})
        report = self._check(model)
        if stored["stored"].startswith("not available"):
            stored["stored"] += (f"; checked instead against the current model on {report.references} reference "
                                 f"pictures ({report.details.get('source', 'none')})")
        report.details.update(stored)
        if not report.ok:
            shutil.rmtree(final, ignore_errors=True)
            raise UpdateRefused(f"its answers are not sane: {report.reason}", report.to_dict())
        self._take_version()
        before = self.current.version
        self._publish(model)
        self.log(f"model v{version} ({origin}) now serving; v{before} kept for rollback")
        return {"swapped": True, "model": model.describe(), "previous": str(before), "checks": report.to_dict()}

    def _check(self, model: LoadedModel):
        if self._check_images is None:
            self._check_images = load_check_images(self.cfg.check_images, self.cfg.limits.max_pixels)
        current = self.current

        def run_current(rgb: np.ndarray) -> np.ndarray:
            return self.worker.run_blocking(current, current.clf.prepare(rgb)[None]).scores[0]

        return check_model(model, current, self._check_images + self.recent(), run_current, self.cfg.min_agreement)

    def rollback(self) -> dict[str, Any]:
        """Serve the previous model again (reopened and checksummed); the current one becomes previous."""
        if self.previous is None:
            raise UpdateRefused("there is no previous model to roll back to")
        if not self._update.acquire(blocking=False):
            raise UpdateBusy("a model update is being checked; try again when it is done")
        try:
            prev = self.previous
            try:
                model = open_model(Path(prev["path"]), int(prev["version"]), "rollback", self.cfg.engine_options)
            except Exception as exc:  # noqa: BLE001
                raise UpdateRefused(f"the previous model v{prev['version']} does not open any more: {exc}") from None
            before = self.current.version
            self._publish(model)
            self.log(f"rolled back to model v{model.version}; v{before} kept for rollback")
            return {"swapped": True, "model": model.describe(), "previous": str(before)}
        finally:
            self._update.release()
