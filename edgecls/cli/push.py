"""`edgecls push ARTIFACT URL... [--devices FILE]`: a model to one device or a fleet (edgecls.fleet.push)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import command, err, escape, print_table, show


def push(
    artifact: Path = typer.Argument(..., help="An exported artifact with its manifest (and check images) beside it."),
    urls: Optional[List[str]] = typer.Argument(None, help="Devices, as `edgecls serve` prints them: http://HOST:PORT"),
    devices: Optional[Path] = typer.Option(None, help="File with one device URL a line (# comments)."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the devices' token (or $EDGECLS_TOKEN)."),
    wave: int = typer.Option(5, help="Devices updated at once after the canary."),
    health_timeout: float = typer.Option(20.0, help="Seconds an updated device has to be ready and serve the model."),
):
    """Update devices through their update route with the artifact's check images: one canary, then waves; at the
    first refusal or failed health check the rollout stops and what was updated is rolled back. Exit 0: all serve
    it; 1: stopped and rolled back; 3: stopped and a rollback failed."""
    from .. import checks
    from ..fleet.push import push as run_push
    from ..fleet.push import read_devices
    from ..serve.config import read_token

    checks.within("wave", wave, 1, 1000)
    checks.within("health_timeout", health_timeout, 0.5, 3600)
    targets = read_devices(urls or [], devices)
    token = read_token(None, token_file)
    rows, code = run_push(artifact, targets, token, wave, health_timeout,
                          log=lambda line: err.print(escape(line), highlight=False))
    _table(rows)
    for row in rows:
        if row.detail:
            err.print(f"{escape(row.url)}: {escape(row.detail)}", highlight=False)
    raise typer.Exit(code)


def _table(rows) -> None:
    from rich.table import Table

    table = Table("device", "model", "old → new", "checks", "time s", "outcome")
    for r in rows:
        change = f"{r.old} → {r.new}" if r.old else ""
        table.add_row(escape(r.url), escape(r.name), escape(change), escape(r.checks), f"{r.seconds:.1f}",
                      escape(r.outcome))
    print_table(show.get(), table)


def register(app: typer.Typer) -> None:
    command(app, push)
