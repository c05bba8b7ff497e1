"""`edgecls backbones`, `targets`, `formats`: what the registries hold."""
from __future__ import annotations

import typer

from .common import command, show


def backbones():
    """List backbone recipes."""
    from ..models import recipes

    for r in recipes().values():
        show.print(f"{r.name:<20} {r.input_size[0]}x{r.input_size[1]}  {r.normalization:<6} {r.description}", markup=False)


def list_targets():
    """List device target profiles."""
    from ..targets import targets

    for t in targets().values():
        refs = "; ".join(f"{r['artifact']} {r['latency_ms']} ms" for r in t.references) or "no published reference"
        show.print(f"{t.name:<14} export {t.export.get('format')}:{t.export.get('quant'):<8} {t.description} [{refs}]; "
                   f"suits {', '.join(t.artifacts)}; engine options for {', '.join(sorted(t.engines))}", markup=False)


def formats():
    """List export formats and quantization modes."""
    from ..export import FORMATS

    for spec in FORMATS.values():
        show.print(f"{spec.format:<9} {spec.quant:<8} {spec.suffix:<8} engine={spec.engine:<12} {spec.description}", markup=False)


def register(app: typer.Typer) -> None:
    command(app, backbones, handled=False)
    command(app, list_targets, "targets", handled=False)
    command(app, formats, handled=False)
