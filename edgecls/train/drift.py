"""Resume on the data the run began with.

When a run has loaded its data, OUT/checkpoint/data.json records the dataset's files (each with
its class, size, modification and status-change times) and the split, by position. `resume`
compares the folder with that record before any work: photos added, removed or replaced since,
or a new class, would mix the splits (a photo trained on in the first epochs could become a
validation photo, the manifest would record a split the model never had) or change the network's
outputs. A changed dataset is refused, or, when asked, the run continues on the recorded files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from ..errors import DatasetError
from ..files import atomic_write_json, loads_strict

RECORD_NAME = "data.json"


def _stamp(path: Path) -> list[int] | None:
    """Size, modification and status-change time: what an edit, a replacement or `touch -r`
    after a copy changes (the status-change time cannot be set back)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _relative(folder: data_mod.ImageFolder, path: Path) -> str:
    return path.relative_to(folder.root).as_posix()


def write_record(checkpoint_dir: Path, folder: data_mod.ImageFolder, split: dict[str, np.ndarray]) -> None:
    """Record the run's files and split in its checkpoint folder."""
    record = {"classes": list(folder.classes),
              "files": [[_relative(folder, f), int(t), *(_stamp(f) or [])] for f, t in zip(folder.files, folder.targets)],
              "split": {k: [int(i) for i in split[k]] for k in ("train", "val", "test")}}
    atomic_write_json(checkpoint_dir / RECORD_NAME, record, indent=None)


def read_record(checkpoint_dir: Path) -> dict[str, Any] | None:
    """The recorded files and split, or None for a checkpoint written before data was recorded."""
    path = checkpoint_dir / RECORD_NAME
    if not path.exists():
        return None
    try:
        record = loads_strict(path.read_text(encoding="utf-8"))
        classes, files, split = record["classes"], record["files"], record["split"]
        if not (isinstance(classes, list) and isinstance(files, list) and isinstance(split, dict)
                and all(isinstance(f, list) and len(f) >= 2 for f in files)):
            raise ValueError("unexpected layout")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: unreadable record of the run's files ({exc}); start a new run") from None
    return record


@dataclass
class DataChanges:
    """How a dataset folder differs from a run's record (relative file names, class names)."""

    new: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    new_classes: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.removed or self.changed or self.new_classes)

    def describe(self) -> str:
        def some(names: list[str]) -> str:
            return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")

        parts = [f"{len(self.new_classes)} new class(es) ({some(self.new_classes)})" if self.new_classes else "",
                 f"{len(self.new)} new file(s) ({some(self.new)})" if self.new else "",
                 f"{len(self.removed)} file(s) gone ({some(self.removed)})" if self.removed else "",
                 f"{len(self.changed)} file(s) replaced or modified ({some(self.changed)})" if self.changed else ""]
        return "; ".join(p for p in parts if p)


def data_changes(record: dict[str, Any], folder: data_mod.ImageFolder) -> DataChanges:
    """What was added, removed or changed in `folder` since `record` was written."""
    recorded = {entry[0]: entry[2:] for entry in record["files"]}
    current = {_relative(folder, f): f for f in folder.files}
    return DataChanges(
        new=[name for name in current if name not in recorded],
        removed=[name for name in recorded if name not in current],
        changed=[name for name, stamp in recorded.items() if name in current and _stamp(current[name]) != stamp],
        new_classes=[c for c in folder.classes if c not in record["classes"]],
    )


def check_unchanged(dataset: Path, checkpoint_dir: Path, record: dict[str, Any], on_recorded_files: bool,
                    console) -> None:
    """Refuse to resume on a dataset that changed since the run began; with `on_recorded_files`,
    allow it when every recorded file is still there (the run then reads only those)."""
    changes = data_changes(record, data_mod.scan(dataset))
    if not changes:
        return
    out_dir = checkpoint_dir.parent
    if not on_recorded_files:
        raise DatasetError(
            f"{dataset}: the dataset changed since the run in {out_dir} began: {changes.describe()}. Resuming would "
            "train and validate on other photos than its first epochs did (a photo already trained on could "
            f"become a validation photo). Start a new run (edgecls train {dataset} --out {out_dir}), or continue on "
            f"the files recorded in {checkpoint_dir / RECORD_NAME} with --on-recorded-files (new files left out, "
            "replaced ones read as they are now)")
    if changes.removed:
        raise DatasetError(f"{dataset}: cannot continue on the recorded files: {len(changes.removed)} of them are "
                           f"gone ({', '.join(changes.removed[:3])}); restore them, or start a new run")
    console.print(f"dataset changed since the run began ({changes.describe()}); continuing on the "
                  f"{len(record['files'])} recorded files: new ones left out, replaced ones read as they are now",
                  markup=False, highlight=False)


def recorded_data(dataset: Path, record: dict[str, Any]) -> tuple[data_mod.ImageFolder, dict[str, np.ndarray]]:
    """The recorded files (as an ImageFolder of `dataset`) and the recorded split."""
    root = Path(dataset)
    folder = data_mod.ImageFolder(root, list(record["classes"]), [root / entry[0] for entry in record["files"]],
                                  np.asarray([entry[1] for entry in record["files"]], dtype=np.int64))
    split = {k: np.asarray(record["split"].get(k, []), dtype=np.int64) for k in ("train", "val", "test")}
    split["all"] = np.arange(len(folder.files))
    return folder, split
