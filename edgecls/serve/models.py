"""Model updates: stage, checksum, open, run the check images the update brought, check against
the current model, swap — or refuse and keep serving — and rollback.

Files live under STATE_DIR/models/v<N>-.../ with names the server chose (model.tflite,
model.tflite.json, ...): nothing a request says becomes a path. Which models served, in which
order, is the history (`history`, STATE_DIR/active.json): a restart resumes the last accepted
update (only while the command line still names the same artifact as when it was accepted), an
update identical to a kept model is that model again, and rollback serves the model before the
current one by content. With nothing to compare a new model with (no check images, no recent
pictures) it is refused unless its own check images answer as at export, or the caller forces it.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import EdgeclsError
from .config import ServeConfig
from .engine import EngineWorker, LoadedModel, open_model
from .history import History, content_key, model_key
from .update_check import check_model, load_check_images, run_stored_checks

SUFFIX_BY_FORMAT = {"tflite": ".tflite", "onnx": ".onnx", "openvino": ".xml"}


class UpdateRefused(EdgeclsError):
    """A new model was not swapped in; the current one keeps serving."""

    def __init__(self, reason: str, checks: dict | None = None):
        super().__init__(reason)
        self.checks = checks or {}


class UpdateBusy(EdgeclsError):
    """Another update is being checked."""


class ModelStore:
    """The serving model, the history of models served, and the only code that changes them."""

    def __init__(self, cfg: ServeConfig, worker: EngineWorker, recent: Callable[[], list[np.ndarray]],
                 log: Callable[[str], None], on_change: Callable[[LoadedModel], None] = lambda m: None):
        self.cfg, self.worker, self.recent, self.log, self.on_change = cfg, worker, recent, log, on_change
        self.root = cfg.state_dir / "models"
        self.history = History(cfg.state_dir, log)
        self.current: LoadedModel | None = None
        self._base_sha = ""
        self._update = threading.Lock()
        self._check_images: list[np.ndarray] | None = None

    # --- start ---------------------------------------------------------------------
    def start(self) -> LoadedModel:
        """Open the command line's artifact, or resume the last accepted update (see module doc).
        Nothing kept is deleted: --no-resume serves ARTIFACT and keeps the updates (rollback reaches them)."""
        from ..files import sha256_file

        self.root.mkdir(parents=True, exist_ok=True)
        for folder in self.root.glob("incoming-*"):  # uploads cut short by a killed process
            shutil.rmtree(folder, ignore_errors=True)
        self.history.load()
        self._base_sha = sha256_file(self.cfg.artifact)
        last = self.history.last
        update = last is not None and self.history.stored(last) and self.history.base_sha == self._base_sha
        if update and self.cfg.resume:
            try:
                model = open_model(Path(last["path"]), int(last["version"]), "resumed", self.cfg.engine_options)
                self.log(f"resuming model v{model.version} accepted earlier ({model.path}); --no-resume serves "
                         f"{self.cfg.artifact} instead")
                return self._publish(model)
            except (EdgeclsError, OSError, KeyError, ValueError) as exc:
                self.log(f"cannot resume the saved model ({exc}); serving {self.cfg.artifact}")
        model = open_model(self.cfg.artifact, 0, "command line", self.cfg.engine_options, self.cfg.labels)
        known = self.history.find(model_key(model))
        model.version = int(known["version"]) if known else self.history.take_version()
        if update and not self.cfg.resume:
            self.log(f"--no-resume: serving {self.cfg.artifact}; model v{last['version']} stays kept (rollback "
                     "serves it)")
        return self._publish(model)

    def _publish(self, model: LoadedModel) -> LoadedModel:
        self.current = model  # one reference assignment: the next job takes the new model whole
        self.history.activate(model, model_key(model), self._base_sha)
        self.on_change(model)
        return model

    @property
    def previous_version(self) -> str | None:
        target = self.history.before_last
        return str(target["version"]) if target else None

    # --- updates -------------------------------------------------------------------
    def new_folder(self) -> Path:
        """An empty folder for an incoming model, named by the server."""
        folder = self.root / f"incoming-{time.time_ns()}"
        folder.mkdir(parents=True)
        return folder

    def accept(self, folder: Path, origin: str, force: bool = False) -> dict[str, Any]:
        """Check the model in `folder` (named model.<ext> + manifest) and swap it in, or refuse it.
        `force`: swap it in even with nothing to compare it with (never when a check fails)."""
        if not self._update.acquire(blocking=False):
            shutil.rmtree(folder, ignore_errors=True)
            raise UpdateBusy("another model update is being checked; try again when it is done")
        try:
            return self._accept(folder, origin, force)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            self._update.release()

    def _accept(self, folder: Path, origin: str, force: bool) -> dict[str, Any]:
        name, manifest = self._staged(folder)
        key = content_key(manifest, manifest.artifact_sha256, manifest.labels)
        if key == model_key(self.current):  # the same upload again: no new version
            shutil.rmtree(folder, ignore_errors=True)
            return {"swapped": False, "model": self.current.describe(), "previous": self.previous_version,
                    "note": f"this model (same checksum and manifest) is already serving as v{self.current.version}"}
        kept = self.history.find(key)
        if kept is not None and self.history.stored(kept):  # a kept model again: its copy and its version
            shutil.rmtree(folder, ignore_errors=True)
            path, version, new = Path(kept["path"]), int(kept["version"]), False
        else:  # stored now; a model known only by a file outside (the command line's) keeps its version
            version, new = (int(kept["version"]) if kept is not None else self.history.next_version), True
            final = self.root / f"v{version}-{time.time_ns()}"
            folder.rename(final)
            path = final / name
        try:
            model, report = self._checked(path, version, origin, manifest, force)
        except BaseException:
            if new:
                shutil.rmtree(path.parent, ignore_errors=True)
            raise
        if kept is None:
            self.history.take_version()
        before = self.current.version
        self._publish(model)
        self.log(f"model v{version} ({origin}) now serving; v{before} kept for rollback"
                 + ("; swapped in unchecked: forced" if report.details.get("forced") else ""))
        return {"swapped": True, "model": model.describe(), "previous": str(before), "checks": report.to_dict()}

    def _staged(self, folder: Path) -> tuple[str, Any]:
        """(the staged artifact's file name, its manifest): one model file whose manifest records its checksum."""
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
        return artifacts[0].name, manifest

    def _checked(self, path: Path, version: int, origin: str, manifest: Any, force: bool):
        """Open the model, run its own check images, compare it with the current model: (model, report)
        or UpdateRefused."""
        from ..check_images import checks_dir

        try:
            model = open_model(path, version, origin, self.cfg.engine_options)
        except Exception as exc:  # noqa: BLE001 - whatever the engine says, the model is refused
            raise UpdateRefused(f"it does not open: {exc}") from None
        try:
            stored, failed = run_stored_checks(model.path, manifest, model.clf)
        except Exception as exc:  # noqa: BLE001 - an engine failure on a check image refuses the model
            stored, failed = {"stored": "failed to run"}, f"it failed to run: {type(exc).__name__}: {exc}"
        if failed:
            self.log(f"model update ({origin}) refused: its stored check images answer differently than at "
                     f"export: {failed}")
            raise UpdateRefused(f"its stored check images answer differently than at export: {failed}",
                                {"ok": False, **stored})
        verified = bool(manifest.checks) and checks_dir(model.path).is_dir()
        report = self._check(model)
        if stored["stored"].startswith("not available"):
            stored["stored"] += (f"; checked instead against the current model on {report.references} reference "
                                 f"pictures ({report.details.get('source', 'none')})")
        report.details.update(stored)
        if not report.ok:
            raise UpdateRefused(f"its answers are not sane: {report.reason}", report.to_dict())
        if report.agreement is None and not verified:
            if not force:
                why = report.details.get("note") or "no --check-images and no recent pictures yet"
                raise UpdateRefused(
                    f"nothing to compare its answers with ({why}), and no check images of its own answered as at "
                    "export: a model with its labels in another order would pass. Send its check images (the "
                    "NAME.checks/ folder beside a watched model, or upload parts \"check\"), or force the swap "
                    "(upload with ?force=true)", report.to_dict())
            report.details["forced"] = True
        return model, report

    def _check(self, model: LoadedModel):
        if self._check_images is None:
            self._check_images = load_check_images(self.cfg.check_images, self.cfg.limits.max_pixels)
        current = self.current

        def run_current(rgb: np.ndarray) -> np.ndarray:
            return self.worker.run_blocking(current, current.clf.prepare(rgb)[None]).scores[0]

        return check_model(model, current, self._check_images + self.recent(), run_current, self.cfg.min_agreement)

    def rollback(self) -> dict[str, Any]:
        """Serve the model before the current one (by content) again, reopened and checksummed; the
        current one becomes the one before (a second rollback undoes the first)."""
        target = self.history.before_last
        if target is None:
            raise UpdateRefused("there is no model before the current one to roll back to")
        if not self._update.acquire(blocking=False):
            raise UpdateBusy("a model update is being checked; try again when it is done")
        try:
            path = Path(target["path"])
            labels = self.cfg.labels if path == Path(self.cfg.artifact).resolve() else None
            try:
                model = open_model(path, int(target["version"]), "rollback", self.cfg.engine_options, labels)
            except Exception as exc:  # noqa: BLE001
                raise UpdateRefused(f"the previous model v{target['version']} does not open any more: {exc}") from None
            if model.sha256 != target["sha256"]:
                raise UpdateRefused(f"the previous model v{target['version']} ({path.name}) changed since it served "
                                    "(another checksum)")
            before = self.current.version
            self._publish(model)
            self.log(f"rolled back to model v{model.version}; v{before} kept for rollback")
            return {"swapped": True, "model": model.describe(), "previous": str(before)}
        finally:
            self._update.release()
