"""Is a new model sane? Run it on reference pictures — the stored check images and the frames the
current model saw last — and compare with the current model's answers, before it serves anyone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAX_CHECK_IMAGES = 32


@dataclass
class CheckReport:
    ok: bool
    reason: str = ""
    references: int = 0
    agreement: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"ok": self.ok, "references": self.references, "agreement": self.agreement, **self.details}
        if self.reason:
            out["reason"] = self.reason
        return out


def load_check_images(folder: Path | None, max_pixels: int) -> list[np.ndarray]:
    """Up to MAX_CHECK_IMAGES pictures from a folder (recursively, in name order); unreadable ones are skipped."""
    if folder is None:
        return []
    from ..errors import ImageError
    from ..preprocess import is_image_name, read_rgb

    pictures = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and is_image_name(p)):
        try:
            rgb = read_rgb(path)
        except ImageError:
            continue
        if rgb.shape[0] * rgb.shape[1] <= max_pixels:
            pictures.append(rgb)
        if len(pictures) >= MAX_CHECK_IMAGES:
            break
    return pictures


def synthetic_picture() -> np.ndarray:
    """A fixed, textured picture for when no real one exists yet (outputs must still be a distribution)."""
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 256, dtype=np.float32)
    picture = (base[None, :, None] * 0.5 + base[:, None, None] * 0.3 + rng.uniform(0, 60, (256, 256, 3)))
    return np.clip(picture, 0, 255).astype(np.uint8)


def valid_distribution(scores: np.ndarray, activation: str | None, quantized: bool) -> str:
    """Why these scores are not class probabilities ("" when they are)."""
    if not np.all(np.isfinite(scores)):
        return "it returned non-finite scores (NaN or infinity)"
    if scores.min() < -1e-3 or scores.max() > 1 + 1e-3:
        return f"its scores leave [0, 1] (from {scores.min():.3g} to {scores.max():.3g})"
    # A quantized softmax output rounds every small probability to zero: its sums fall short of 1
    # (0.95 on the Coral MobileNetV2), so only float outputs are held to the sum.
    if activation in ("softmax", "none") and not quantized:
        sums = scores.sum(axis=-1)
        if np.abs(sums - 1).max() > 0.02:
            return f"its probabilities do not sum to 1 (sums from {sums.min():.3f} to {sums.max():.3f})"
    return ""


def check_model(new: Any, current: Any, references: list[np.ndarray],
                run_current: Callable[[np.ndarray], np.ndarray], min_agreement: float) -> CheckReport:
    """Run `new` (a LoadedModel, not yet serving) on the references, in the caller's thread.

    Refused when its outputs are not probabilities, or when its top-1 answers agree with the
    current model's on fewer than `min_agreement` of the references (a mislabelled or broken
    export)."""
    pictures = references or [synthetic_picture()]
    try:
        scores = np.concatenate([new.clf.scores([rgb]) for rgb in pictures])
    except Exception as exc:  # noqa: BLE001 - any engine failure refuses the model
        return CheckReport(False, f"it failed to run: {type(exc).__name__}: {exc}", len(references))
    problem = valid_distribution(scores, new.clf.output_activation, new.clf.engine.output.quantized)
    if problem:
        return CheckReport(False, problem, len(references))
    details: dict[str, Any] = {"source": "check images and recent frames" if references else
                               "a synthetic picture only (no check images or recent frames yet)"}
    if not references or current is None:
        return CheckReport(True, "", len(references), None, details)
    # Compared where the current model's answer is a class the new one knows (a retrained model
    # may add or drop classes).
    known = set(new.labels)
    old_top = [current.labels[int(run_current(rgb).argmax())] for rgb in references]
    pairs = [(new.labels[int(i)], old) for i, old in zip(scores.argmax(axis=-1), old_top) if old in known]
    if not pairs:
        details["note"] = "none of the current model's answers is a class of the new model: agreement not compared"
        return CheckReport(True, "", len(references), None, details)
    agreement = float(np.mean([a == b for a, b in pairs]))
    details["compared"] = len(pairs)
    if agreement < min_agreement:
        return CheckReport(False, f"its top-1 answers agree with the current model's on {agreement:.0%} of "
                                  f"{len(pairs)} reference pictures, below --min-agreement {min_agreement:.0%}",
                           len(references), agreement, details)
    return CheckReport(True, "", len(references), agreement, details)


def staged_check_image(artifact: Path, index: int, image: str) -> Path:
    """Where the server keeps an update's `index`-th check image: a name it chose (the manifest's
    path only lends its suffix), in the folder beside the staged artifact."""
    from ..check_images import checks_dir

    return checks_dir(artifact) / f"{index}{Path(image).suffix.lower()}"


def run_stored_checks(artifact: Path, manifest: Any, classifier: Any) -> tuple[dict[str, Any], str]:
    """Run the check images an update brought (see `staged_check_image`) on its opened model.

    Returns (report, refusal reason or ""). Images that did not come along are reported, not
    refused: the caller's reference pictures then stand in for them."""
    from types import SimpleNamespace

    from ..check_images import checks_dir, run_checks

    listed = len(manifest.checks)
    if not listed:
        return {"stored": "none: the manifest lists no check images"}, ""
    if not checks_dir(artifact).is_dir():
        return {"stored": f"not available: the manifest lists {listed} check images but they did not come with "
                          "the update"}, ""
    staged = SimpleNamespace(checks=[{**c, "image": staged_check_image(artifact, k, c["image"]).relative_to(
        artifact.parent).as_posix()} for k, c in enumerate(manifest.checks)])
    failed = []
    for check, result in zip(manifest.checks, run_checks(artifact, staged, classifier)):
        if not result["ok"]:
            got = (f"{result['got']} ({result['probability']:.3f})" if "got" in result
                   else result["problem"].split(": ", 1)[-1])
            failed.append({"image": check["image"], "expected": check["top1"], "got": got})
    report = {"stored": f"{listed - len(failed)}/{listed} answered as at export"}
    if not failed:
        return report, ""
    report["stored_failed"] = failed
    return report, "; ".join(f"{f['image']}: expected {f['expected']}, got {f['got']}" for f in failed)
