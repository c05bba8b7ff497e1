"""The `edgecls doctor` command: a table for people, `--json` for machines; exit 0 only when every
needed check passed (1 otherwise, 2 for a bad request such as an unknown target, which `--json`
also reports on stdout: {"ok": false, "error": ...})."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import typer

from .common import command, err, escape, show
from .exits import message

STYLE = {"ok": "green", "info": "dim", "warn": "yellow", "fail": "bold red"}


def doctor(
    artifacts: Optional[List[Path]] = typer.Argument(None, help="Artifacts to check: opens, checksum, check images, "
                                                     "fastest thread count."),
    target: Optional[str] = typer.Option(None, help="Target profile: the engine options to open with, and the "
                                         "machine and Python it expects."),
    camera: Optional[str] = typer.Option(None, help="A camera that must work: index, /dev/videoN or picamera2[:N]."),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Time each artifact at 1, 2, 4... threads."),
    as_json: bool = typer.Option(False, "--json", help="The report as JSON on stdout."),
):
    """Check that this device can run the artifacts: Python, OS, CPU, engines, delegates, cameras, memory,
    disk, temperature, and each artifact's checksum and answers. Every problem says what to do."""
    from ..doctor import SCHEMA, diagnose, save_last
    from ..errors import EdgeclsError
    from ..files import strict_json

    try:
        report = diagnose(artifacts or [], target, camera, sweep)
    except EdgeclsError as exc:
        if as_json:  # a machine reading stdout gets a document there too (the error goes to stderr as well)
            print(strict_json({"schema": SCHEMA, "ok": False, "error": message(exc), "findings": []}, "the doctor report",
                              indent=2))
        raise
    saved = save_last(report)
    if as_json:
        print(strict_json(report, "the doctor report", indent=2))
    else:
        print_table(report, saved)
    if not report["ok"]:
        raise typer.Exit(1)


def print_table(report: dict[str, Any], saved: Path | None) -> None:
    """The findings as a Rich table, then one line per failure with what to do."""
    from rich.table import Table

    table = Table(title="edgecls doctor" + (f" (target {escape(report['target'])})" if report["target"] else ""))
    for column in ("", "check", "status", "finding / what to do"):
        table.add_column(column, overflow="fold")
    section = None
    for f in report["findings"]:
        shown = escape(f["section"]) if f["section"] != section else ""
        section = f["section"]
        text = escape(f["detail"]) + (f"\n[{STYLE[f['status']]}]→ {escape(f['fix'])}[/]" if f["fix"] else "")
        table.add_row(shown, escape(f["name"]), f"[{STYLE[f['status']]}]{f['status']}[/]", text)
    show.print(table)
    failed = [f for f in report["findings"] if f["status"] == "fail"]
    for f in failed:
        err.print(f"[bold red]fail:[/] {escape(f['section'])} {escape(f['name'])}: {escape(f['detail'])}\n"
                  f"  what to do: {escape(f['fix'])}", highlight=False)
    verdict = "[green]ready[/]: every needed check passed" if report["ok"] else (
        f"[bold red]not ready[/]: {len(failed)} needed check{'s' if len(failed) > 1 else ''} failed")
    show.print(verdict + (f" (report kept in {escape(str(saved))})" if saved else ""), highlight=False)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """`edgecls doctor`."""
    command(app, doctor)
