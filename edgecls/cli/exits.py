"""How a command ends: one line for an error (options named by their flags), and exit codes
130/143 after Ctrl-C or SIGTERM once the clean-up has run. No Typer or Rich here: the plain
predict path uses it too."""
from __future__ import annotations

import signal

from ..errors import EdgeclsError, OptionError

# Library parameters whose flag is not `--` + the name with dashes.
FLAGS = {"num_threads": "--threads", "warmup_seconds": "--warmup-time", "min_seconds": "--min-time"}


def flag(option: str) -> str:
    """The command-line spelling of a library parameter (`learning_rate` -> `--learning-rate`)."""
    return FLAGS.get(option) or "--" + option.replace("_", "-")


def message(exc: EdgeclsError) -> str:
    """The error's text, with the options it names spelled as flags."""
    import re

    text = str(exc)
    for option in getattr(exc, "options", ()) if isinstance(exc, OptionError) else ():
        text = re.sub(rf"(?<![\w-]){re.escape(option)}(?![\w-])", flag(option), text)
    return text


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the file, then what went wrong."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


def install_sigterm() -> None:
    """SIGTERM (a service stop, `timeout`, a container shutdown) unwinds like Ctrl-C: the same
    clean-up runs (finally blocks, temporary folders) and the command says it was stopped. Both
    record the request, so that code catching broad exceptions can tell an interrupt apart."""
    from ..errors import request_stop

    def handler(signum, frame):
        request_stop("SIGTERM" if signum == signal.SIGTERM else "SIGINT")
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None):
            signal.signal(sig, handler)


def interrupted_exit_code() -> int:
    """128 + the signal number, as a shell reports a process stopped by that signal."""
    from ..errors import stop_requested

    return 143 if stop_requested() == "SIGTERM" else 130
