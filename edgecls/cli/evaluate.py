"""`edgecls evaluate`: accuracy, per-class metrics and the confusion matrix of any model file."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..data import SPLITS
from .common import command, err, escape, folder_option, show
from .options import Activation, Interpolation, Resize, Threads
from .plain_predict import check_preprocessing_options


def evaluate(
    model: Annotated[Path, typer.Argument(help="A .keras model or an exported artifact.")],
    dataset: Annotated[Path, typer.Argument(help="Image-folder dataset.")],
    split: Annotated[str, typer.Option(help=f"{' | '.join(SPLITS)} | auto (val when the model records its "
                                       "split).")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder for metrics.json and the confusion matrix.")]
    = None,
    threads: Threads = None,
    activation: Activation = None,
    resize: Resize = None,
    interpolation: Interpolation = None,
):
    """Accuracy, per-class precision/recall/F1, confusion matrix, overfitting check."""
    folder_option("--out", out)
    check_preprocessing_options(resize, interpolation)
    from ..workflows import evaluate_model

    options = {k: v for k, v in (("num_threads", threads), ("activation", activation), ("resize", resize),
                                 ("interpolation", interpolation)) if v is not None}
    result = evaluate_model(model, dataset, split, out, console=err.get(), **options)
    show.print(result["table"], markup=False, highlight=False)
    if "train_accuracy" in result:
        show.print(f"train accuracy {result['train_accuracy']:.4f}")
    if result.get("warning"):
        err.print(f"[yellow]warning:[/] {escape(result['warning'])}")
    show.print(f"confusion matrix: {result['confusion_matrix_png']}\nmetrics: {result['metrics_json']}", markup=False)


def register(app: typer.Typer) -> None:
    command(app, evaluate)
