"""`edgecls cv`: stratified k-fold cross-validation of a training recipe, or of the linear probe."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import command, err, escape, show
from .options import Dataset, training_options
from .train import training_config


@training_options("backbone", "weights", "input_size", "resize", "epochs", "fine_tune_epochs", "batch_size",
                  "learning_rate", "dropout", "seed", "augment", "oversample", "class_weights", "feature_crops", "head_c",
                  "recipe")
def cross_validation(
    dataset: Dataset,
    folds: Annotated[int, typer.Option(help="Number of stratified folds (at least 2).")] = 5,
    out: Annotated[Path, typer.Option(help="Output folder: cv.json, cv.md, cv.png and one model per fold.")]
    = Path("runs/cv"),
    probe: Annotated[bool, typer.Option("--probe", help="The frozen linear probe instead of training: backbone "
                                        "features once, logistic regression per fold (fast).")] = False,
    training: dict = None,
):
    """Stratified k-fold cross-validation: mean ± std of accuracy and macro F1, per-fold table and plot."""
    from ..cv import check_folds

    check_folds(folds)
    config = training_config(training)
    if probe:
        from ..cv import probe_cv, probe_features

        feats, targets, labels = probe_features(dataset, config.backbone, config.weights, config.input_size,
                                                resize=config.resize)
        result = probe_cv(feats, targets, labels, folds, training["seed"], out,
                          "balanced" if training["class_weights"] else None)
    else:
        from ..cv import cross_validate

        result = cross_validate(dataset, out, config, folds, console=err.get(),
                                on_fold=lambda r: err.print(f"fold {r['fold']}: accuracy {r['accuracy']:.4f}, "
                                                            f"macro F1 {r['macro_f1']:.4f}", highlight=False))
    show.print(Path(result.paths["md"]).read_text(), markup=False)
    show.print(result.line(), highlight=False, markup=False)
    show.print(f"table: {escape(result.paths['md'])}\nplot:  {escape(result.paths['png'])}", highlight=False)


def register(app: typer.Typer) -> None:
    command(app, cross_validation, "cv")
