"""Image-folder datasets: one sub-folder per class, a deterministic stratified split, decoding
through the shared preprocessing. numpy and OpenCV only, so the device can evaluate too."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import DatasetError, ImageError, OptionError
from .preprocess import Preprocessing, is_image_name

SPLITS = ("train", "val", "test", "all")


@dataclass
class ImageFolder:
    """The files of an image-folder dataset, labelled by their folder's index in `classes`."""

    root: Path
    classes: list[str]
    files: list[Path]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.files)


@dataclass
class LoadedImages:
    """Decoded, resized RGB uint8 images with their class indices, and what could not be read."""

    images: np.ndarray          # (N, H, W, 3) uint8
    targets: np.ndarray         # (N,) int
    files: list[Path]
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def scan(root: str | Path) -> ImageFolder:
    """List an image-folder dataset; raises DatasetError if it cannot be a classification set.

    Symbolic links are followed, but one that leads back into the dataset (a loop such as
    `cycle -> .`, or a second name for a folder or file already listed) is refused: it would
    make a duplicate class or count the same photo twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found (expected one sub-folder per class)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"{root}: no class sub-folders; expected {root}/<class name>/<image files>")
    root_real = root.resolve()
    seen_dirs: dict[Path, Path] = {root_real: root}
    seen_files: dict[Path, Path] = {}
    files, targets = [], []
    for index, d in enumerate(class_dirs):
        _visit_dir(d, root_real, seen_dirs)
        members = _class_files(d, root_real, seen_dirs, seen_files)
        if not members:
            raise DatasetError(f"{d}: class folder '{d.name}' is empty; every class needs images")
        files.extend(members)
        targets.extend([index] * len(members))
    if len(class_dirs) < 2:
        raise DatasetError(
            f"{root}: only one class ('{class_dirs[0].name}'); a classifier needs at least two class folders"
        )
    return ImageFolder(root, [d.name for d in class_dirs], files, np.asarray(targets, dtype=np.int64))


def _visit_dir(path: Path, root_real: Path, seen: dict[Path, Path]) -> None:
    """Record a folder about to be listed; refuse one reached before or enclosing the dataset."""
    real = path.resolve()
    if real in seen or real in root_real.parents:
        first = seen.get(real, real)
        what = "the dataset folder or one above it" if real == root_real or real in root_real.parents \
            else f"'{first}', already listed"
        raise DatasetError(f"{path}: a link to {real}, which is {what}: a loop or a duplicate class; "
                           "remove the link or move it out of the dataset")
    seen[real] = path


def _class_files(class_dir: Path, root_real: Path, seen_dirs: dict[Path, Path],
                 seen_files: dict[Path, Path]) -> list[Path]:
    def unlistable(exc: OSError) -> None:
        raise DatasetError(f"{exc.filename}: cannot list this folder ({exc.strerror})")

    members = []
    for dirpath, dirnames, filenames in os.walk(class_dir, onerror=unlistable, followlinks=True):
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in dirnames:
            _visit_dir(Path(dirpath) / name, root_real, seen_dirs)
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith(".") or not path.is_file():
                continue
            real = path.resolve()
            if real in seen_files:
                raise DatasetError(f"{path}: the same file as {seen_files[real]} (a link); each photo may "
                                   "appear once in a dataset, in one class")
            seen_files[real] = path
            members.append(path)
    return sorted(members)


def split_indices(targets: np.ndarray, val_fraction: float = 0.2, test_fraction: float = 0.0,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic stratified split: each class is shuffled with `seed` and cut by fraction."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DatasetError(f"invalid split fractions val={val_fraction} test={test_fraction}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction)) if val_fraction else 0
        n_test = int(round(len(idx) * test_fraction)) if test_fraction else 0
        if val_fraction and len(idx) >= 2:
            n_val = max(1, n_val)
        parts["val"].extend(idx[:n_val])
        parts["test"].extend(idx[n_val : n_val + n_test])
        parts["train"].extend(idx[n_val + n_test :])
    out = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}
    out["all"] = np.arange(len(targets))
    return out


def fold_indices(targets: np.ndarray, folds: int, fold: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The split of fold `fold` of a stratified `folds`-fold partition (shuffled with `seed`):
    that fold is "val", the rest "train"; "test" is empty and "all" is everything."""
    from sklearn.model_selection import StratifiedKFold

    targets = np.asarray(targets)
    if folds < 2:
        raise OptionError(f"folds must be at least 2, got {folds}")
    if not 0 <= fold < folds:
        raise OptionError(f"fold must be in 0..{folds - 1}, got {fold}")
    smallest = int(np.unique(targets, return_counts=True)[1].min()) if len(targets) else 0
    if smallest < folds:
        raise DatasetError(f"the smallest class has {smallest} images; {folds}-fold cross-validation needs at least "
                           f"{folds} per class (use fewer folds)")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(np.zeros(len(targets)), targets))[fold]
    return {"train": np.sort(train), "val": np.sort(val), "test": np.zeros(0, dtype=np.int64),
            "all": np.arange(len(targets))}


def split_record(folder: ImageFolder, parts: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """The files of each split, relative to the dataset root, for the model's manifest."""
    return {k: [folder.files[i].relative_to(folder.root).as_posix() for i in parts[k]] for k in ("train", "val", "test")}


def recorded_split(folder: ImageFolder, split: dict | None) -> dict[str, np.ndarray]:
    """The split a model was trained with, from its manifest's `source.split`.

    Manifests since file lists were recorded (`split.files`) get exactly those files: photos added
    to the folder later belong to no split (only to "all"). A recorded validation or test file that
    is gone is a DatasetError; a training file that is gone is left out. Older manifests
    (fractions and seed only) recompute the split over the folder as it is now.
    """
    split = split or {}
    recorded = split.get("files")
    if recorded is None:
        return split_indices(folder.targets, split.get("val_fraction", 0.2), split.get("test_fraction", 0.0),
                             split.get("seed", 0))
    if not isinstance(recorded, dict) or not all(
            isinstance(recorded.get(k, []), list) and all(isinstance(f, str) for f in recorded.get(k, []))
            for k in ("train", "val", "test")):
        raise DatasetError("the manifest's source.split.files is not {train, val, test: [file, ...]}; "
                           "retrain or remove the field")
    index = {f.relative_to(folder.root).as_posix(): i for i, f in enumerate(folder.files)}
    gone = [f for k in ("val", "test") for f in recorded.get(k, []) if f not in index]
    if gone:
        raise DatasetError(
            f"{folder.root}: {len(gone)} file(s) of the validation/test split recorded with the model are "
            f"missing (e.g. {', '.join(gone[:3])}); restore them, evaluate another split, or retrain"
        )
    out = {k: np.sort(np.asarray([index[f] for f in recorded.get(k, []) if f in index], dtype=np.int64))
           for k in ("train", "val", "test")}
    out["all"] = np.arange(len(folder.files))
    return out


def label_indices(folder: ImageFolder, labels: Sequence[str]) -> np.ndarray:
    """Model output index of each class folder, matched by name."""
    missing = [c for c in folder.classes if c not in labels]
    if missing:
        raise DatasetError(f"{folder.root}: class folders {missing} are not among the model's labels {list(labels)}")
    return np.asarray([list(labels).index(c) for c in folder.classes])


def load_images(folder: ImageFolder, indices: Sequence[int], preprocessing: Preprocessing,
                on_progress: Callable[[int], None] | None = None) -> LoadedImages:
    """Decode and resize the chosen files; unreadable files are skipped and listed.

    A class that had files among `indices` but none readable is a DatasetError naming it: its
    absence would otherwise pass silently into accuracies and macro averages.
    """
    h, w = preprocessing.size
    images = np.empty((len(indices), h, w, 3), dtype=np.uint8)
    kept, skipped = [], []
    for i in indices:
        path = folder.files[i]
        try:
            images[len(kept)] = preprocessing.load(path)
            kept.append(int(i))
        except ImageError as exc:
            skipped.append((path, str(exc).removeprefix(f"{path}: ")))
        if on_progress:
            on_progress(1)
    _check_every_class_readable(folder, indices, kept, skipped)
    return LoadedImages(images[: len(kept)], folder.targets[kept], [folder.files[i] for i in kept], skipped)


def _check_every_class_readable(folder: ImageFolder, indices: Sequence[int], kept: list[int],
                                skipped: list[tuple[Path, str]]) -> None:
    wanted = set(folder.targets[np.asarray(indices, dtype=np.int64)].tolist())
    lost = sorted(wanted - set(folder.targets[np.asarray(kept, dtype=np.int64)].tolist()))
    if not lost:
        return
    dirs = [folder.root / folder.classes[c] for c in lost]
    names = ", ".join(f"'{d.name}' ({d})" for d in dirs)
    theirs = [(p, why) for p, why in skipped if any(d in p.parents for d in dirs)]
    raise DatasetError(
        f"no readable images for class {names}: every selected file failed to decode; fix or remove "
        f"them, or remove the class folder\n{skipped_summary(theirs, limit=5)}"
    )


def take_per_class(targets: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of about `count` items spread evenly over classes (stratified subsample)."""
    if count >= len(targets):
        return np.arange(len(targets))
    rng = np.random.default_rng(seed)
    classes = np.unique(targets)
    per_class = [rng.permutation(np.flatnonzero(targets == c)) for c in classes]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count:
        for idx in per_class:
            if depth < len(idx) and len(chosen) < count:
                chosen.append(int(idx[depth]))
        depth += 1
    return np.sort(np.asarray(chosen))


def load_calibration_folder(path: str | Path, preprocessing: Preprocessing, count: int,
                            seed: int = 0) -> LoadedImages:
    """About `count` images from a folder for quantization calibration.

    An image-folder dataset is sampled evenly over its class sub-folders (stratified, seeded, so
    the same files every time) rather than taking the alphabetically first files, which would
    calibrate on the first classes only. Unreadable files are skipped and listed.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: calibration folder not found")
    files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p) and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{path}: no image files for calibration")
    # A file's class is its top sub-folder; files directly in `path` form one group.
    group = [f.relative_to(path).parts[0] if len(f.relative_to(path).parts) > 1 else "" for f in files]
    names = sorted(set(group))
    targets = np.asarray([names.index(g) for g in group], dtype=np.int64)
    chosen = take_per_class(targets, count, seed)
    h, w = preprocessing.size
    images = np.empty((len(chosen), h, w, 3), dtype=np.uint8)
    kept, skipped = [], []
    for i in chosen:
        try:
            images[len(kept)] = preprocessing.load(files[i])
            kept.append(int(i))
        except ImageError as exc:
            skipped.append((files[i], str(exc).removeprefix(f"{files[i]}: ")))
    if not kept:
        raise DatasetError(f"{path}: none of the {len(chosen)} sampled calibration images is readable\n"
                           + skipped_summary(skipped, limit=5))
    return LoadedImages(images[: len(kept)], targets[kept], [files[i] for i in kept], skipped)


def skipped_summary(skipped: Sequence[tuple[Path, str]], limit: int = 20) -> str:
    """Human summary of unreadable files."""
    if not skipped:
        return ""
    lines = [f"skipped {len(skipped)} unreadable file(s):"]
    lines += [f"  {p}: {reason}" for p, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  ... and {len(skipped) - limit} more")
    return "\n".join(lines)
