"""`edgecls ensemble`: one Keras model averaging several trained ones."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import command, err, escape, show


def ensemble(
    models: Annotated[List[Path], typer.Argument(
        help="Two or more .keras models trained by edgecls on the same classes.")],
    out: Annotated[Path, typer.Option(help="Output folder for model.keras, its manifest and metrics.")]
    = Path("runs/ensemble"),
    dataset: Annotated[Optional[Path], typer.Option(
        help="Dataset for the validation comparison (default: the members' training set).")] = None,
):
    """Average several models' probabilities in one Keras model that exports, evaluates and benchmarks like any."""
    from rich.table import Table

    from ..ensemble import build_ensemble

    result = build_ensemble(models, out, dataset)
    show.print(f"model:      {escape(str(result.model_path))}", highlight=False)
    if result.metrics:
        table = Table(title=f"validation split ({result.metrics['count']} images)")
        for col in ("model", "file", "accuracy", "balanced acc", "macro F1"):
            table.add_column(col, no_wrap=col != "file")
        for name, row in result.metrics.items():
            if isinstance(row, dict):
                table.add_row(name, escape(row["model"]), f"{row['accuracy']:.4f}", f"{row['balanced_accuracy']:.4f}",
                              f"{row['macro_f1']:.4f}")
        show.print(table)
        show.print(f"ensemble vs best member ({result.metrics['best_member']}): "
                   f"{result.metrics['gain_over_best_member_pp']:+.2f} pp")
    for w in result.warnings:
        err.print(f"[yellow]warning:[/] {escape(w)}")


def register(app: typer.Typer) -> None:
    command(app, ensemble)
