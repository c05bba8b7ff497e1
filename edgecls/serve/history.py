"""The models a server has served, by content: STATE_DIR/active.json, written atomically.

Updates are data. Each accepted model keeps its folder (STATE_DIR/models/v<N>-.../) and its
version; the history lists the models in the order they last served, one entry per content
(`content_key`: the artifact's checksum and what the manifest says about using it), the current
one last. So an upload identical to a kept model is that model again, under its version (no new
version, no new copy), and "the model before the current one" (rollback) always differs from it
by content. Nothing is deleted when the server starts, with or without --no-resume; only when
more than KEPT_UPDATES accepted updates are kept does the one served longest ago go (never the
current model nor the one before it).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Callable

KEPT_UPDATES = 5       # accepted updates kept on disk (each at most --max-model-mb)
MAX_ENTRIES = 20       # entries remembered in all (models outside STATE_DIR cost no disk)


def content_key(manifest: Any, sha256: str, labels: list[str]) -> str:
    """What makes two models the same model: the artifact's checksum and its companions', the labels,
    the preprocessing, the tensors and the check images' expected answers (not file names, dates or
    training notes). `manifest` may be None (a model given with --labels)."""
    if manifest is None:
        doc: dict[str, Any] = {"artifact_sha256": sha256, "labels": list(labels)}
    else:
        doc = {"format": manifest.format, "artifact_sha256": manifest.artifact_sha256,
               "companions": sorted(manifest.companions.values()), "labels": list(manifest.labels),
               "preprocessing": manifest.preprocessing.to_dict(), "input": manifest.input, "output": manifest.output,
               "checks": [[c.get("sha256"), c.get("top1")] for c in manifest.checks]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def model_key(model: Any) -> str:
    """`content_key` of an opened model (a LoadedModel)."""
    return content_key(model.clf.manifest, model.sha256, model.labels)


class History:
    """The served models (current last), the next version number, and the command line's artifact
    checksum when the state was written (resume only while it is unchanged)."""

    def __init__(self, state_dir: Path, log: Callable[[str], None]):
        self.path = state_dir / "active.json"
        self.root = state_dir / "models"
        self.log = log
        self.entries: list[dict[str, Any]] = []
        self.next_version = 1
        self.base_sha = ""

    def load(self) -> None:
        """Read the state (also the format before histories: {"current", "previous"})."""
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            state = {}
        state = state if isinstance(state, dict) else {}
        entries = state.get("history")
        if not isinstance(entries, list):
            entries = [e for e in (state.get("previous"), state.get("current")) if isinstance(e, dict)]
        self.entries = [e for e in entries if isinstance(e, dict) and {"path", "version", "sha256"} <= set(e)
                        and str(e["version"]).isdigit()]
        current = state.get("current") if isinstance(state.get("current"), dict) else {}
        self.base_sha = str(state.get("base_sha256") or current.get("base_sha256") or "")
        recorded = state.get("next_version")
        self.next_version = max([recorded if isinstance(recorded, int) and recorded > 0 else 1,
                                 *(int(e["version"]) + 1 for e in self.entries)])

    @property
    def last(self) -> dict[str, Any] | None:
        return self.entries[-1] if self.entries else None

    @property
    def before_last(self) -> dict[str, Any] | None:
        """The model before the current one (by content): the rollback target."""
        return self.entries[-2] if len(self.entries) >= 2 else None

    def find(self, key: str) -> dict[str, Any] | None:
        return next((e for e in self.entries if e.get("key") == key), None)

    def stored(self, entry: dict[str, Any]) -> bool:
        """The entry's files are the server's own copy (under STATE_DIR/models) and still there."""
        path = Path(entry["path"])
        return path.parent.parent == self.root.resolve() and path.is_file()

    def take_version(self) -> int:
        version, self.next_version = self.next_version, self.next_version + 1
        return version

    def activate(self, model: Any, key: str, base_sha: str) -> None:
        """`model` serves now: its entry goes last (replacing an entry of the same content), the
        oldest updates beyond the bounds go, and the state is written."""
        old = self.find(key)
        entry = {"version": model.version, "sha256": model.sha256, "key": key, "path": str(model.path.resolve()),
                 "origin": model.origin}
        if old is not None and self.stored(old) and not self.stored(entry):
            entry["path"] = old["path"]  # the server's own copy outlives a command-line file that may change
        self.entries = [e for e in self.entries if e.get("key") != key] + [entry]
        self.base_sha = base_sha
        self._prune()
        self.save()

    def _prune(self) -> None:
        kept, dropped = [], []
        stored_seen = 0
        for n, entry in enumerate(reversed(self.entries)):
            protected = n < 2  # the current model and the one before it
            stored = self.stored(entry)
            stored_seen += stored
            if protected or (n < MAX_ENTRIES and (not stored or stored_seen <= KEPT_UPDATES)):
                kept.append(entry)
            else:
                dropped.append(entry)
        self.entries = kept[::-1]
        for entry in dropped:
            if self.stored(entry):
                shutil.rmtree(Path(entry["path"]).parent, ignore_errors=True)
                self.log(f"removed model v{entry['version']} ({entry['origin']}): more than {KEPT_UPDATES} updates "
                         "are kept")

    def save(self) -> None:
        from ..files import atomic_write_json

        atomic_write_json(self.path, {"next_version": self.next_version, "base_sha256": self.base_sha,
                                      "history": self.entries})
