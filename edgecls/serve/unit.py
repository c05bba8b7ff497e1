"""The systemd unit of an edgecls service, written once for both: `edgecls serve` (what
`edgecls serve-unit` writes) and `edgecls stream`, the two services the installer of an
`edgecls deploy` bundle sets up (it runs `serve-unit --command KIND` of the release it installs).

Restart on failure; SIGTERM stops it (serve finishes the requests in progress and exits 0, stream
flushes its sinks and exits 143); state in /var/lib/edgecls, cache in /var/cache/edgecls, the
`video` group for cameras; an explicit open-file limit (systemd's default soft limit is also 1024,
but distributions change it), which serve's connection cap is derived from.

Refused before a unit is written: a serve unit bound beyond loopback without --token-file (the
service would refuse to start and be restarted every 3 s, for ever), and running as root unless
asked for by name (`--user root`): by default the unit runs as the user who writes it, or the
user behind sudo. Explained (a warning; the unit is still written, as a bundle installed for a
test under /tmp needs): any path under /tmp or /var/tmp, which PrivateTmp=yes replaces by an
empty folder for the service. Not DynamicUser=: a dynamic user could not read
the token file (mode 600, owned by its user) or a model in a home folder.
"""
from __future__ import annotations

import getpass
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

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
# Descriptors below 1024: select()-based code (OpenCV's V4L2 capture) breaks above; serve derives its
# connection cap from this limit (768), keeping the rest for the model, the camera and files.
LimitNOFILE=1024
StateDirectory=edgecls
CacheDirectory=edgecls
Environment=EDGECLS_CACHE=/var/cache/edgecls
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


PRIVATE_TMP = (Path("/tmp"), Path("/var/tmp"))


def service_user(user: str | None) -> str:
    """The unit's User=: the one given, else the user writing the unit — or the one behind sudo;
    root only when given by name."""
    if user:
        return user
    name = getpass.getuser()
    if name == "root":
        name = os.environ.get("SUDO_USER") or "root"
    if name == "root":
        raise OptionError("the service would run as root: give --user NAME (an account in the video group for "
                          "cameras, that can read the model and the token file), or --user root to run it as root "
                          "anyway", "user")
    return name


def check_unit_args(kind: str, params: dict[str, Any], workdir: Path) -> list[str]:
    """Refuse what would make the unit fail when systemd starts it (see the module doc); `params` are
    the arguments as the command parsed them. Returns warnings: the paths under /tmp or /var/tmp."""
    from .config import is_loopback

    if kind == "serve" and not is_loopback(str(params.get("host") or "127.0.0.1")) and not params.get("token_file"):
        raise OptionError(f"--host {params.get('host')} reaches beyond this machine and the unit has no token: give "
                          "--token-file FILE (serve refuses to start without a token there, and systemd would restart "
                          "it every 3 s for ever)")
    named = [("the working directory", workdir)]
    for name, value in params.items():
        if isinstance(value, Path) or (name == "source" and isinstance(value, str) and value.startswith(("/", "."))):
            label = name.upper() if name in ("artifact", "source") else "--" + name.replace("_", "-")
            named.append((f"{label} {value}", Path(value)))
    warnings = []
    for label, value in named:
        where = Path(os.path.normpath(workdir / value))
        tmp = next((t for t in PRIVATE_TMP if where == t or t in where.parents), None)
        if tmp is not None:
            warnings.append(f"{label} lies under {tmp}, which the unit replaces by an empty private folder "
                            "(PrivateTmp=yes): the service will not find it there. Keep it elsewhere (e.g. "
                            "/var/lib/edgecls, /opt/edgecls, /etc/edgecls)")
    return warnings


def write_unit(args: list[str], out: Path, user: str | None, description: str,
               validate: Callable[[list[str]], dict[str, Any] | None] = lambda a: None, kind: str = "serve",
               python: str | None = None, warn: Callable[[str], None] = lambda message: None) -> Path:
    """Check the arguments (`validate` parses them with the command the unit runs and returns what it
    parsed) and write the unit file atomically; `python` defaults to this interpreter, the working
    directory is this one. What cannot work under the unit's PrivateTmp= goes to `warn`."""
    from ..files import atomic_write_text

    params = validate(args)
    for warning in check_unit_args(kind, params, Path.cwd()) if params is not None else []:
        warn(warning)
    if any(c in description for c in "\n\r"):
        raise OptionError("--description must be one line")
    text = unit_text(args, service_user(user), description, Path.cwd(), python or sys.executable, kind)
    if out.suffix != ".service":
        raise OptionError(f"--out {out}: a systemd unit file name ends in .service")
    atomic_write_text(out, text)
    return out
