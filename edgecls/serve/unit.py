"""A systemd unit for `edgecls serve`: restart on failure, SIGTERM to stop (the server finishes
requests in progress), state in /var/lib/edgecls unless the arguments say otherwise."""
from __future__ import annotations

import getpass
import shlex
import sys
from pathlib import Path
from typing import Callable

from ..errors import OptionError


def unit_text(args: list[str], user: str, description: str, workdir: Path, python: str) -> str:
    if any(a == "--token" or a.startswith("--token=") for a in args):
        raise OptionError("--token would be readable in the unit file and the process list; write the token to a "
                          "file readable only by the service user and pass --token-file")
    if not any(a == "--state-dir" or a.startswith("--state-dir=") for a in args):
        args = [*args, "--state-dir", "/var/lib/edgecls"]
    command = " ".join(shlex.quote(a).replace("%", "%%") for a in [python, "-m", "edgecls.cli", "serve", *args])
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
TimeoutStopSec=45
StateDirectory=edgecls
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def write_unit(args: list[str], out: Path, user: str | None, description: str,
               validate: Callable[[list[str]], None] = lambda a: None) -> Path:
    """Check the serve arguments and write the unit file atomically."""
    from ..files import atomic_write_text

    validate(args)
    if any(c in description for c in "\n\r"):
        raise OptionError("--description must be one line")
    text = unit_text(args, user or getpass.getuser(), description, Path.cwd(), sys.executable)
    if out.suffix != ".service":
        raise OptionError(f"--out {out}: a systemd unit file name ends in .service")
    atomic_write_text(out, text)
    return out
