"""`edgecls quickstart`: the whole pipeline on the embedded digits dataset."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .common import command, err, escape, folder_option, show


def quickstart(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("runs/quickstart"),
    epochs: Annotated[int, typer.Option()] = 15,
):
    """The whole pipeline on the embedded digits dataset: train, export, evaluate, benchmark, report."""
    folder_option("--out", out)
    from ..workflows import quickstart as run_quickstart

    result = run_quickstart(out, epochs, console=err.get())
    show.print(Path(result["report"]).read_text(), markup=False, soft_wrap=True)
    show.print(f"report:    {result['report']}\nmodel:     {result['model']}", markup=False)
    for a in result["artifacts"]:
        show.print(f"artifact:  {a}", markup=False)
    show.print(f"bench:     {result['bench_md']}\nwall time: {result['seconds']:.0f} s", markup=False)
    if result["failed"]:
        err.print(f"[red]exports that failed verification:[/] {escape(', '.join(result['failed']))}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    command(app, quickstart)
