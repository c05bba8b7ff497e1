"""The `edgecls` command line: one module per command group (listed in `commands.GROUPS`), each
importing the layer it drives only when a command runs.

`main()` is the `edgecls` console script and `python -m edgecls.cli`. A plain `edgecls predict`
call runs in `plain_predict`, without Typer or Rich (a cold start on a device pays for every
import); everything else goes through the Typer application of `commands.build_app`. Importing
this package runs nothing.

User-supplied text (paths, labels, messages) is printed escaped or with markup off: a file named
`photo[copy].jpg` prints as it is named.
"""
from __future__ import annotations

import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the output


def main() -> None:
    """Run the command line on sys.argv."""
    from ..errors import stop_requested
    from .exits import install_sigterm, interrupted_exit_code
    from .plain_predict import run_plain_predict

    install_sigterm()
    run_plain_predict(sys.argv[1:])  # a plain `edgecls predict` runs there and exits
    from .commands import build_app

    try:
        build_app()()
    except (SystemExit, KeyboardInterrupt):
        if not stop_requested():
            raise
        # Stopped by a signal: the command's clean-up has run. Leave without interpreter
        # finalization, where a late interrupt in a library's thread or atexit hook would turn
        # the documented 130/143 into death by signal.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(interrupted_exit_code())


def __getattr__(name: str) -> Any:
    if name == "app":  # the Typer application, for typer.testing.CliRunner and embedding
        from .commands import build_app

        return build_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
