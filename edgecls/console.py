"""The Rich consoles edgecls prints through: on a terminal as Rich lays them out; written to a
pipe or a log, one unwrapped line per message.

Off a terminal Rich assumes 80 columns and hard-wraps (or crops) every longer line, so an error
naming a long path lands in a CI log or a `grep` split in two, at a place that moves with the
path. There a message stays one line (`soft_wrap`), and tables get their natural width
(`cli.common.print_table`) within a generous bound.
"""
from __future__ import annotations

import re
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


# A URL's userinfo (rtsp://admin:pass@camera/...): up to the last "@" of the word, since camera
# passwords often hold a raw "@" (urllib also splits at the last one). Over-redacting a rare path
# with an "@" in it costs a log reader a few characters; under-redacting leaks a password.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)\S*@")
# Credentials given as key=value: GStreamer's rtspsrc user-pw=..., URL query strings (?password=,
# &token=, edgecls serve's own ?token=).
_SECRET_VALUE = re.compile(r"(?i)\b(user-pw|user-id|password|passwd|pwd|pass|token|access_token|api[_-]?key|"
                           r"secret|auth)=([^&\s\"',;]+)")


def redact(text: object) -> str:
    """`text` with the secrets a source or URL may carry replaced by `***`: URL userinfo
    (rtsp://***@camera/stream1) and credential parameters (user-pw=***, ?token=***). Everything
    edgecls prints or answers about a source (logs, status, readiness, errors) goes through it."""
    text = _USERINFO.sub(r"\1***@", str(text))
    return _SECRET_VALUE.sub(r"\1=***", text)
