"""The Rich consoles edgecls prints through: on a terminal as Rich lays them out; written to a
pipe or a log, one unwrapped line per message.

Off a terminal Rich assumes 80 columns and hard-wraps (or crops) every longer line, so an error
naming a long path lands in a CI log or a `grep` split in two, at a place that moves with the
path. There a message stays one line (`soft_wrap`), and tables get their natural width
(`cli.common.print_table`) within a generous bound.
"""
from __future__ import annotations

from typing import Any

OFF_TERMINAL_WIDTH = 240  # progress bars and tables off a terminal; messages are never wrapped there


def make_console(stderr: bool = False, **options: Any):
    """A Rich console on stdout (or stderr) that never hard-wraps lines written to a pipe or a file."""
    from rich.console import Console

    console = Console(stderr=stderr, **options)
    if not console.is_terminal:
        console.soft_wrap = True
        if "width" not in options:
            console.width = max(console.width, OFF_TERMINAL_WIDTH)
    return console
