"""Retraining in rounds (`edgecls train DATASET --previous RUN`): new photos came from the device,
and the new model must be judged honestly against the one it replaces.

- The split is carried by file: a photo held out by the previous model (its manifest's
  `source.split.files`: validation or test) stays in the same held-out split, a previous training
  photo stays in training, and only the photos new to this round are split (stratified, by the
  same fractions and seed). A photo relabelled since (moved to another class folder) is matched by
  its file name, so a held-out photo never becomes a training one by moving.
- The report (OUT/rounds.json, OUT/rounds.md, and `rounds` in metrics.json) scores the previous
  model and the new one on the same fixed test photos (the previous round's test split, or its
  validation split when it had none, said so), paired: the difference, its 95% interval and
  McNemar's exact p; and both on the photos new to this round that were held out."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import data as data_mod
from ..errors import OptionError


def previous_manifest(previous: str | Path):
    """The manifest of the previous round's model: a run folder (model.keras) or a model file."""
    from ..manifest import load_manifest

    path = Path(previous)
    model = path / "model.keras" if path.is_dir() else path
    manifest = load_manifest(model) if model.exists() else None
    if manifest is None:
        raise OptionError(f"--previous {previous}: no model with a manifest there (give the earlier run's folder or "
                          "its model.keras)", "previous")
    files = (manifest.source.get("split") or {}).get("files") if isinstance(manifest.source, dict) else None
    if not isinstance(files, dict):
        raise OptionError(f"--previous {previous}: its manifest records no split by file (trained by an older "
                          "edgecls, or not by `edgecls train`): retrain it once", "previous")
    return model, manifest, {k: [f for f in files.get(k) or [] if isinstance(f, str)] for k in ("train", "val", "test")}


def carried_split(folder: data_mod.ImageFolder, previous: dict[str, list[str]], val_fraction: float,
                  test_fraction: float, seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The split of this round (see the module's notes) and what it says about the carry."""
    where: dict[str, str] = {}   # "class/file" -> split, and "*file" -> split (a photo moved to another class)
    for part in ("train", "val", "test"):
        for name in previous[part]:
            where[name] = part
            if part != "train" or "*" + Path(name).name not in where:  # held out wins over training
                where["*" + Path(name).name] = part
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    new = []
    for i, path in enumerate(folder.files):
        rel = path.relative_to(folder.root).as_posix()
        part = where.get(rel) or where.get("*" + path.name)
        if part is None:
            new.append(i)
        else:
            parts[part].append(i)
    new = np.asarray(new, dtype=np.int64)
    if len(new):
        fresh = data_mod.split_indices(folder.targets[new], val_fraction, test_fraction, seed)
        for part in ("train", "val", "test"):
            parts[part].extend(new[fresh[part]].tolist())
    present = {p.relative_to(folder.root).as_posix() for p in folder.files} | {"*" + p.name for p in folder.files}
    gone = [n for k in ("val", "test") for n in previous[k] if n not in present and "*" + Path(n).name not in present]
    split = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in parts.items()}
    split["all"] = np.arange(len(folder.files))
    return split, {"new": new, "held_out_gone": gone}


def _scorer(model: Path):
    """(probabilities of resized pictures, labels, preprocessing) of a .keras model or an artifact."""
    if model.suffix == ".keras":
        from ..keras_model import KerasScorer

        scorer = KerasScorer(model)
        return scorer.scores_resized, list(scorer.labels), scorer.preprocessing
    from ..runtime import Classifier

    clf = Classifier.from_artifact(model)
    return clf.scores, list(clf.labels), clf.preprocessing


def _correct(model: Path, folder: data_mod.ImageFolder, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per photo: right or not (a class the model lacks counts as wrong), and which were readable."""
    scores, labels, preprocessing = _scorer(model)
    loaded = data_mod.load_images(folder, indices, preprocessing)
    kept = np.asarray([folder.files.index(p) for p in loaded.files], dtype=np.int64)
    if not len(kept):
        return np.zeros(0, bool), kept
    predicted = np.asarray(labels)[scores(loaded.images).argmax(1)]
    truth = np.asarray(folder.classes)[loaded.targets]
    return predicted == truth, kept


def compare(previous: Path, new_model: Path, folder: data_mod.ImageFolder, split: dict[str, np.ndarray],
            previous_files: dict[str, list[str]], new: np.ndarray, gone: list[str]) -> dict[str, Any]:
    """The round's report: both models on the fixed test photos (paired) and on the new held-out photos."""
    from ..evaluate import paired_difference, wilson_interval

    fixed_split = "test" if previous_files["test"] else "val"
    fixed_names = set(previous_files[fixed_split]) | {"*" + Path(n).name for n in previous_files[fixed_split]}
    fixed = np.asarray([i for i in split[fixed_split] if i not in set(new.tolist()) and (
        folder.files[i].relative_to(folder.root).as_posix() in fixed_names or "*" + folder.files[i].name in fixed_names)],
        dtype=np.int64)
    report: dict[str, Any] = {"previous": str(previous), "new": str(new_model), "fixed_split": fixed_split,
                              "held_out_gone": gone[:20], "held_out_gone_count": len(gone)}
    if fixed_split == "val":
        report["note"] = ("the previous round had no test split: its validation photos stand in (it chose its epochs "
                          "on them, so its own figure there is slightly optimistic); train round 1 with --test-fraction")
    sets = {"fixed_test": fixed, "new_held_out": np.intersect1d(new, np.concatenate([split["val"], split["test"]]))}
    for name, indices in sets.items():
        if not len(indices):
            report[name] = {"count": 0}
            continue
        old_right, old_kept = _correct(previous, folder, indices)
        new_right, new_kept = _correct(new_model, folder, indices)
        both = np.intersect1d(old_kept, new_kept)
        a, b = new_right[np.isin(new_kept, both)], old_right[np.isin(old_kept, both)]
        entry = {"count": int(len(both)), "new_accuracy": float(a.mean()), "previous_accuracy": float(b.mean()),
                 "new_ci95": wilson_interval(int(a.sum()), len(a)), "previous_ci95": wilson_interval(int(b.sum()), len(b))}
        entry["paired"] = paired_difference(a, b)  # new minus previous; McNemar exact p
        report[name] = entry
    return report


def markdown(report: dict[str, Any]) -> str:
    """The round report as a short Markdown page."""
    lines = [f"# Round report\n\nprevious model: `{report['previous']}`  \nnew model: `{report['new']}`\n",
             "| photos | count | previous | new | new − previous (95% CI) | McNemar p (new right only / previous right only) |",
             "|---|---|---|---|---|---|"]
    titles = {"fixed_test": f"fixed test (the previous round's {report['fixed_split']} split)",
              "new_held_out": "new this round, held out"}
    for key, title in titles.items():
        e = report[key]
        if not e["count"]:
            lines.append(f"| {title} | 0 | | | | |")
            continue
        p = e["paired"]
        lines.append(f"| {title} | {e['count']} | {e['previous_accuracy']:.3f} | {e['new_accuracy']:.3f} | "
                     f"{p['difference']:+.3f} ({p['low']:+.3f} to {p['high']:+.3f}) | {p['p_value']:.3g} "
                     f"({p['a_only']} / {p['b_only']}) |")
    if report.get("note"):
        lines.append(f"\nNote: {report['note']}.")
    if report["held_out_gone_count"]:
        lines.append(f"\n{report['held_out_gone_count']} photo(s) held out in the previous round are gone from the "
                     "dataset (e.g. " + ", ".join(report["held_out_gone"][:3]) + ").")
    return "\n".join(lines) + "\n"



def write_report(previous: str, out_dir: Path, folder: data_mod.ImageFolder, split: dict[str, np.ndarray],
                 config, model_path: Path) -> dict[str, Any]:
    """Compare the previous round's model with the new one; OUT/rounds.json and rounds.md, and
    `rounds` in metrics.json."""
    import json

    from ..files import atomic_write_json, atomic_write_text

    model, _, files = previous_manifest(previous)
    _, carry = carried_split(folder, files, config.val_fraction, config.test_fraction, config.seed)
    report = compare(model, model_path, folder, split, files, carry["new"], carry["held_out_gone"])
    report["new_photos"] = int(len(carry["new"]))
    atomic_write_json(out_dir / "rounds.json", report)
    atomic_write_text(out_dir / "rounds.md", markdown(report))
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    metrics["rounds"] = report
    atomic_write_json(out_dir / "metrics.json", metrics)
    return report
