"""Check images: a few small pictures stored beside an artifact with the answers it gave where it
was made, so that any device can confirm that it computes the same (`edgecls doctor`).

They are PNG files: lossless, so every OpenCV build decodes them to the same pixels (JPEG decoders
may differ in the last bit). The expected answer is the runtime's answer on the stored file
itself, read back from disk, not on the photo it came from. Part of the light runtime.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ImageError, ModelError

CHECKS_SUFFIX = ".checks"
DEFAULT_COUNT = 3
# Top-1 minus top-2 probability a check image needs. int8 kernels of different CPUs moved the
# probabilities of one artifact by up to 0.05 (bench/results/arm_numerics.md); a margin four times
# that keeps a check's answer the same on every correct CPU, so a changed answer means a fault.
MIN_MARGIN = 0.2


def checks_dir(artifact: str | Path) -> Path:
    """The folder beside `artifact` that holds its check images (`model.tflite.checks/`)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + CHECKS_SUFFIX)


def _answer(classifier, path: Path) -> tuple[str, float, float]:
    """(top-1 label, its probability, margin over the second) of the runtime on a stored file."""
    from .preprocess import read_rgb

    scores = classifier.scores([read_rgb(path)])[0]
    order = np.argsort(-scores, kind="stable")
    second = float(scores[order[1]]) if len(order) > 1 else 0.0
    return classifier.labels[int(order[0])], float(scores[order[0]]), float(scores[order[0]]) - second


def write_checks(artifact: str | Path, classifier, pictures: Sequence[np.ndarray],
                 truths: Sequence[str | None] | None = None, count: int = DEFAULT_COUNT,
                 min_margin: float = MIN_MARGIN, select: bool = True) -> tuple[list[dict[str, Any]], list[str]]:
    """Store check images for `artifact` (RGB uint8 pictures) and return the manifest entries and notes.

    With `select`, at most `count` pictures are kept: those whose answer has at least `min_margin`,
    right answers (per `truths`) and distinct classes first. Without it every picture is kept and a
    narrow margin is reported in the notes (the caller chose them)."""
    import cv2

    from .files import sha256_file

    artifact = Path(artifact)
    folder = checks_dir(artifact)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    candidates = []
    for i, rgb in enumerate(pictures):
        path = folder / f"candidate-{i}.png"
        if not cv2.imwrite(str(path), np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8)[..., ::-1])):
            raise ImageError(f"{path}: OpenCV could not write the check image")
        label, probability, margin = _answer(classifier, path)
        truth = truths[i] if truths is not None else None
        candidates.append({"path": path, "top1": label, "probability": probability, "margin": margin,
                           "right": truth is None or truth == label, "truth": truth})
    kept = _select(candidates, count, min_margin) if select else candidates
    notes = [f"check image {c['truth'] or c['path'].name}: the answer {c['top1']} leads by only {c['margin']:.3f}; "
             "a device could answer differently without a fault" for c in kept if c["margin"] < min_margin]
    if select and not kept:
        notes.append(f"no check images stored: no candidate was answered with a margin of {min_margin} or more")
    entries = []
    for k, c in enumerate(kept):
        final = folder / f"{k}.png"
        c["path"].replace(final)
        entries.append({"image": f"{folder.name}/{final.name}", "sha256": sha256_file(final), "top1": c["top1"],
                        "probability": round(c["probability"], 6), **({"label": c["truth"]} if c["truth"] else {})})
    for c in candidates:
        c["path"].unlink(missing_ok=True)
    if not entries:
        folder.rmdir()
    return entries, notes


def _select(candidates: list[dict], count: int, min_margin: float) -> list[dict]:
    """Wide-margin right answers first, one per class, then the widest of the rest."""
    usable = sorted((c for c in candidates if c["margin"] >= min_margin and c["right"]), key=lambda c: -c["margin"])
    kept, classes = [], set()
    for c in usable:
        if c["top1"] not in classes and len(kept) < count:
            kept.append(c)
            classes.add(c["top1"])
    kept += [c for c in usable if c not in kept][: count - len(kept)]
    return kept


def run_checks(artifact: str | Path, manifest, classifier) -> list[dict[str, Any]]:
    """Run an artifact's check images; one result per image with `ok` and, when not, `problem`."""
    from .files import sha256_file

    results = []
    for check in manifest.checks:
        path = Path(artifact).parent / check["image"]
        result = {"image": check["image"], "expected": check["top1"], "expected_probability": check.get("probability")}
        results.append(result)
        if not path.is_file():
            result.update(ok=False, problem=f"{path}: check image missing (copy the whole artifact folder)")
            continue
        if sha256_file(path) != check["sha256"]:
            result.update(ok=False, problem=f"{path}: check image modified since export (checksum differs)")
            continue
        try:
            label, probability, _ = _answer(classifier, path)
        except (ImageError, ModelError) as exc:
            result.update(ok=False, problem=str(exc))
            continue
        result.update(got=label, probability=probability, ok=label == check["top1"])
        if not result["ok"]:
            result["problem"] = f"{path.name}: answered {label} ({probability:.3f}), expected {check['top1']}"
    return results
