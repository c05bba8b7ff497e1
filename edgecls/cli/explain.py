"""`edgecls explain`: Grad-CAM overlays and a gallery of the mistakes of a trained Keras model."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from .common import command, err, escape, show
from .export import KerasModel


def _gallery(model: Path, dataset: Optional[Path], out: Path, split: str, limit: int) -> None:
    from ..explain import mistakes_gallery
    from ..manifest import load_manifest

    manifest = load_manifest(model)
    source = dataset or Path((manifest.source.get("dataset") if manifest else "") or "")
    if not str(source) or str(source) == "." or not source.is_dir():
        err.print("gallery skipped: no dataset found; pass --dataset DIR", highlight=False, markup=False)
        return
    g = mistakes_gallery(model, source, out, split, limit)
    show.print(f"gallery: {escape(g['page'])} ({g['wrong']} of {g['count']} {escape(split)} images wrong, "
               f"{g['shown']} shown)", highlight=False)


def explain(
    model: KerasModel,
    images: Annotated[Optional[List[Path]], typer.Argument(help="Image files to explain.")] = None,
    out: Annotated[Path, typer.Option(help="Output folder for overlays and the gallery.")] = Path("runs/explain"),
    class_name: Annotated[Optional[str], typer.Option(
        "--class", help="Explain this class instead of the predicted one.")] = None,
    dataset: Annotated[Optional[Path], typer.Option(
        help="Dataset for the gallery of mistakes (default: the training set).")] = None,
    split: Annotated[str, typer.Option(help="Split whose mistakes the gallery shows: train | val | test | all.")]
    = "val",
    gallery: Annotated[bool, typer.Option(
        help="Write mistakes.html: the split's misclassified images with overlays.")] = True,
    limit: Annotated[int, typer.Option(help="Most mistakes shown in the gallery.")] = 60,
):
    """Grad-CAM overlays for images, and an HTML gallery of the validation images the model gets wrong."""
    from .. import checks
    from ..errors import OptionError
    from ..explain import explain_images

    checks.at_least("limit", limit, 1)
    if not images and not gallery:
        raise OptionError("nothing to explain: give image files, or keep the gallery of mistakes (--gallery)")
    for r in explain_images(model, images or [], out, class_name):
        show.print(f"{escape(r['image'])}: predicted {escape(r['predicted'])} ({r['probability']:.3f}); "
                   f"evidence for {escape(r['explained'])}: {escape(r['overlay'])}", highlight=False)
    if gallery:
        _gallery(model, dataset, out, split, limit)


def register(app: typer.Typer) -> None:
    command(app, explain)
