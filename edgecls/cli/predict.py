"""`edgecls predict`: classify images with an exported artifact through the light runtime."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import command
from .options import Activation, Artifact, Images, Interpolation, Labels, Normalization, Resize, Threads, TopK
from .plain_predict import check_predict_options, open_classifier, run_predict


def predict(
    artifact: Artifact,
    images: Images,
    labels: Labels = None,
    normalization: Normalization = None,
    resize: Resize = None,
    interpolation: Interpolation = None,
    top_k: TopK = 3,
    threads: Threads = None,
    activation: Activation = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON line per image.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Also write a class activation map overlay per image "
                                          "(artifacts exported with the explain option).")] = False,
    explain_out: Annotated[Path, typer.Option(help="Folder for the --explain overlays.")] = Path("runs/explain"),
):
    """Classify images with an exported artifact through the light runtime."""
    # A plain call never gets here: plain_predict runs it without Typer and Rich. Both share the
    # option checks and the predict loop.
    check_predict_options(top_k, threads, activation, resize, interpolation)
    clf = open_classifier(artifact, labels, normalization, resize, threads, activation, interpolation)

    def overlay(image: Path) -> Optional[dict]:
        from ..cam import explain_artifact

        cam = explain_artifact(clf, image, explain_out)["overlay"]
        return {"overlay": cam} if cam else None

    failed = run_predict(clf, images, top_k, as_json, lambda line: print(line, flush=True),
                         lambda line: print(line, file=sys.stderr, flush=True), overlay if explain else None)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    command(app, predict)
