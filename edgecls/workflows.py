"""Whole jobs built from the layers below: evaluation of any model file, and the quickstart."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import checks
from . import data as data_mod
from .errors import DatasetError
from .evaluate import compute_metrics, format_metrics, overfit_warning, plot_confusion
from .files import atomic_write_json, atomic_write_text
from .outputs import refuse_overlaps


def _scorer(model: Path, **engine_options: Any):
    """A function RGB uint8 (resized) images -> probabilities, plus labels and preprocessing.
    `resize` and `interpolation` among the options override the model's (see Classifier.from_artifact)."""
    if model.suffix == ".keras":
        from dataclasses import replace

        from .keras_model import KerasScorer

        keras_scorer = KerasScorer(model)
        overrides = {k: engine_options[k] for k in ("resize", "interpolation") if engine_options.get(k)}
        preprocessing = replace(keras_scorer.preprocessing, **overrides)
        keras_scorer.preprocessing = preprocessing
        return keras_scorer.scores_resized, keras_scorer.labels, preprocessing, keras_scorer.manifest
    from .runtime import Classifier

    clf = Classifier.from_artifact(model, **engine_options)
    return clf.scores, clf.labels, clf.preprocessing, clf.manifest


def evaluate_model(model: str | Path, dataset: str | Path, split: str = "auto", out_dir: str | Path | None = None,
                   console=None, **engine_options: Any) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1 and a confusion-matrix PNG for a Keras model or any
    exported artifact; with the training split at hand, also the train-vs-validation gap.
    `engine_options` apply to an exported artifact (a Keras model takes none)."""
    from .console import make_console

    from .runtime import check_activation

    checks.one_of("split", split, (*data_mod.SPLITS, "auto"))  # before the model is loaded
    checks.threads("num_threads", engine_options.get("num_threads"))
    check_activation(engine_options.get("activation"))
    console = console or make_console(stderr=True)
    model = Path(model)
    out_dir = Path(out_dir) if out_dir else model.parent / "eval" / model.name
    refuse_overlaps({"model": model, "dataset": dataset}, folders={"--out": out_dir})
    scores, labels, preprocessing, manifest = _scorer(model, **engine_options)
    folder = data_mod.scan(dataset)
    # Dataset class index -> model output index, by name.
    to_model = data_mod.label_indices(folder, labels)
    parts, split, note = data_mod.evaluation_split(folder, manifest.source if manifest else None, split)
    if note:
        console.print(f"note: {note}", markup=False, highlight=False)

    def run(indices):
        loaded = data_mod.load_images(folder, indices, preprocessing)
        if len(loaded.targets) == 0:
            raise DatasetError(f"{dataset}: no readable images in the {split} split")
        probs = scores(loaded.images)
        return compute_metrics(to_model[loaded.targets], probs.argmax(1), labels), loaded.skipped

    metrics, skipped = run(parts[split])
    if skipped:
        console.print(data_mod.skipped_summary(skipped), markup=False)  # file names are not markup
    result: dict[str, Any] = {"model": str(model), "dataset": str(dataset), "split": split, **metrics.to_dict(),
                              "skipped": [[str(p), why] for p, why in skipped], **({"note": note} if note else {})}
    if split in ("val", "test") and manifest is not None and manifest.source.get("split"):
        train_metrics, _ = run(parts["train"])
        result["train_accuracy"] = train_metrics.accuracy
        warning = overfit_warning(train_metrics.accuracy, metrics.accuracy)
        if warning:
            result["warning"] = warning
    out_dir.mkdir(parents=True, exist_ok=True)
    result["confusion_matrix_png"] = str(plot_confusion(metrics, out_dir / "confusion_matrix.png",
                                                        f"{model.name} on {split}"))
    atomic_write_json(out_dir / "metrics.json", result)
    result["metrics_json"] = str(out_dir / "metrics.json")
    result["table"] = format_metrics(metrics)
    return result


def write_digits_dataset(root: str | Path, size: int = 32) -> Path:
    """The 1,797 real handwritten digit scans shipped in scikit-learn, as 10 class folders of PNGs."""
    import cv2
    from sklearn.datasets import load_digits

    root = Path(root)
    digits = load_digits()
    if (root / "9").is_dir() and sum(1 for _ in root.rglob("*.png")) == len(digits.images):
        return root
    for i, (image, target) in enumerate(zip(digits.images, digits.target)):
        pixels = (255 - image * (255 / 16)).astype(np.uint8)  # dark ink on white paper, 8-bit gray
        big = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_CUBIC)
        folder = root / str(target)
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"digit_{i:04d}.png"), big)
    return root


def quickstart(out_dir: str | Path = "runs/quickstart", epochs: int = 15, console=None) -> dict[str, Any]:
    """Digits dataset -> train simple_cnn -> export every format -> evaluate -> bench -> report."""
    from .console import make_console
    from rich.markup import escape

    from .bench import bench, markdown_table, write_reports
    from .export.pipeline import export_model
    from .train import TrainConfig, train

    checks.at_least("epochs", epochs, 1)  # before anything is written
    console = console or make_console(stderr=True)
    started = time.perf_counter()
    out_dir = Path(out_dir)
    dataset = write_digits_dataset(out_dir / "digits")
    console.rule(escape(f"dataset: {dataset} (scikit-learn handwritten digits, 10 classes)"))
    config = TrainConfig(backbone="simple_cnn", weights="none", epochs=epochs, fine_tune_epochs=0,
                         batch_size=64, val_fraction=0.2, test_fraction=0.1, patience=4, flip=False)
    trained = train(dataset, out_dir / "model", config, console=console)
    console.rule("export")
    reports = export_model(trained.model_path, "tflite,onnx,openvino", "fp32,int8", out_dir=out_dir / "export",
                           console=console, max_accuracy_drop=2.0)
    artifacts = [r.path for r in reports if r.passed]
    console.rule("evaluate (held-out test split)")
    evaluations = {}
    for model in [str(trained.model_path), *artifacts]:
        result = evaluate_model(model, dataset, split="test", out_dir=out_dir / "eval" / Path(model).name, console=console)
        evaluations[Path(model).name] = result["accuracy"]
        console.print(f"{Path(model).name:<24} test accuracy {result['accuracy']:.4f}", markup=False)
    console.rule("benchmark")
    bench_report = bench(artifacts, threads=2, min_runs=50, min_seconds=1.0)
    json_path, md_path = write_reports(bench_report, out_dir / "bench")
    elapsed = time.perf_counter() - started
    lines = ["# edgecls quickstart report", "",
             f"Dataset: {dataset} (1,797 real 8x8 digit scans from scikit-learn, written as 32x32 PNGs).", "",
             f"Model: simple_cnn, validation accuracy {trained.metrics['val']['accuracy']:.4f}; "
             f"training curves: {trained.out_dir / 'training_curves.png'}", "",
             "| model | test accuracy |", "|---|---|"]
    lines += [f"| {name} | {acc:.4f} |" for name, acc in evaluations.items()]
    lines += ["", "## Export verification (validation split)", "",
              "| artifact | kept | accuracy | drop (pp) | top-1 agreement |", "|---|---|---|---|---|"]
    for r in reports:
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {r.key} | {'yes' if r.passed else 'no: ' + (r.error or '')} | "
                     f"{fmt(r.accuracy)} | {fmt(r.accuracy_drop_pp)} | {fmt(r.top1_agreement)} |")
    lines += ["", "## Benchmark", "", markdown_table(bench_report), f"Total wall time: {elapsed:.0f} s", ""]
    report_path = out_dir / "report.md"
    atomic_write_text(report_path, "\n".join(lines))
    return {"report": str(report_path), "model": str(trained.model_path), "artifacts": artifacts,
            "bench_json": str(json_path), "bench_md": str(md_path), "seconds": elapsed,
            "failed": [r.key for r in reports if not r.passed]}
