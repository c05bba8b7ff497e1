"""`edgecls pull URL --out DATASET`: a device's labelled photos into a dataset (edgecls.fleet.pull)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import command, err, escape, folder_option, show


def pull(
    url: str = typer.Argument(..., help="The device, as `edgecls serve` prints it: http://HOST:PORT"),
    out: Path = typer.Option(..., help="The image-folder dataset the photos go into (created when missing)."),
    token_file: Optional[Path] = typer.Option(None, help="File holding the device's token (or $EDGECLS_TOKEN)."),
    retries: int = typer.Option(5, help="Attempts after a lost connection (each resumes the photo where it stopped)."),
):
    """Bring the photos collected and labelled on a device into DATASET: only what is new, checked by
    SHA-256, resumable, never overwriting a file, with a provenance file beside each photo."""
    from .. import checks
    from ..fleet.pull import pull as run_pull
    from ..serve.config import read_token

    checks.within("retries", retries, 0, 100)
    folder_option("--out", out)
    result = run_pull(url, out, read_token(None, token_file), retries,
                      log=lambda line: err.print(escape(line), highlight=False))
    device = result.device
    show.print(f"{escape(device.get('host', '?'))} ({device.get('id', '?')[:8]}): {len(result.fetched)} new photo(s) "
               f"({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s, {len(result.moved)} moved to another class, "
               f"{result.skipped} already here" + (f", {result.resumed} transfer(s) resumed" if result.resumed else ""),
               highlight=False)
    if result.refused:
        err.print(f"[yellow]warning:[/] {len(result.refused)} listed photo(s) refused: {escape(result.refused[0])}")


def register(app: typer.Typer) -> None:
    command(app, pull)
