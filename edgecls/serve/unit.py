"""The systemd unit of an edgecls service, written once for both: `edgecls serve` (what
`edgecls serve-unit` writes) and `edgecls stream`, the two services the installer of an
`edgecls deploy` bundle sets up (it runs `serve-unit --command KIND` of the release it installs).

Restart on failure; SIGTERM stops it (serve finishes the requests in progress and exits 0, stream
flushes its sinks and exits 143); state in /var/lib/edgecls, cache in /var/cache/edgecls, the
`video` group for cameras.
"""
from __future__ import annotations

import getpass
import re
import sys
from pathlib import Path
from typing import Callable

from ..errors import OptionError

SERVICES = ("serve", "stream")
STATE_DIR = "/var/lib/edgecls"
_SYSTEMD_PLAIN = re.compile(r"^[A-Za-z0-9_./:=@+,-]+$")


def systemd_quote(arg: str) -> str:
    """One ExecStart argument: plain when safe, else double-quoted with systemd's escapes (`$` and
    `%` would otherwise expand)."""
    if _SYSTEMD_PLAIN.match(arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def service_args(kind: str, args: list[str]) -> list[str]:
    """The arguments the unit passes to `edgecls KIND`: serve's state in STATE_DIR unless given,
    and never a token on the command line."""
    if kind not in SERVICES:
        raise OptionError(f"command {kind!r}: expected one of {', '.join(SERVICES)}", "command")
    if kind != "serve":
        return list(args)
    if any(a == "--token" or a.startswith("--token=") for a in args):
        raise OptionError("--token would be readable in the unit file and the process list; write the token to a "
                          "file readable only by the service user and pass --token-file")
    if not any(a == "--state-dir" or a.startswith("--state-dir=") for a in args):
        args = [*args, "--state-dir", STATE_DIR]
    return list(args)


def unit_text(args: list[str], user: str, description: str, workdir: Path, python: str, kind: str = "serve") -> str:
    """The unit that runs `PYTHON -m edgecls.cli KIND ARGS...` as `user`."""
    command = " ".join(systemd_quote(a) for a in [python, "-m", "edgecls.cli", kind, *service_args(kind, args)])
    return f"""[Unit]
Description={description}
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User={user}
SupplementaryGroups=video
WorkingDirectory={workdir}
ExecStart={command}
Restart=on-failure
RestartSec=3
KillSignal=SIGTERM
SuccessExitStatus=143
TimeoutStopSec=45
StateDirectory=edgecls
CacheDirectory=edgecls
Environment=EDGECLS_CACHE=/var/cache/edgecls
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def write_unit(args: list[str], out: Path, user: str | None, description: str,
               validate: Callable[[list[str]], None] = lambda a: None, kind: str = "serve",
               python: str | None = None) -> Path:
    """Check the arguments (`validate` parses them with the command the unit runs) and write the
    unit file atomically; `python` defaults to this interpreter, the working directory is this one."""
    from ..files import atomic_write_text

    validate(args)
    if any(c in description for c in "\n\r"):
        raise OptionError("--description must be one line")
    text = unit_text(args, user or getpass.getuser(), description, Path.cwd(), python or sys.executable, kind)
    if out.suffix != ".service":
        raise OptionError(f"--out {out}: a systemd unit file name ends in .service")
    atomic_write_text(out, text)
    return out
