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
    """The error's text, with the options it names spelled as flags and the secrets a source URL
    may carry redacted (`edgecls.console.redact`)."""
    import re

    from ..console import redact

    text = redact(exc)
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
    from ..errors import request_stop, stop_requested
    from ..signals import install, redeliver_swallowed_stops

    def handler(signum, frame):
        request_stop("SIGTERM" if signum == signal.SIGTERM else "SIGINT")
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        # An ignored signal (nohup, a background job) is not in this list: it stays ignored.
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None):
            install(sig, handler)  # not in forked children (edgecls.signals)
    # The KeyboardInterrupt lands wherever the signal finds the interpreter; where Python swallows
    # it (a __del__, a gc callback such as JAX's) the stop is delivered again, never lost.
    redeliver_swallowed_stops(
        lambda: {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}.get(stop_requested() or ""))


# 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away (`yes | head -1`).
CLOSED_STDOUT_EXIT = 141


def stdout_closed() -> bool:
    """Whether the reader of stdout has gone (`edgecls predict ... | head -1` after its line): the
    pipe reports an error condition. Where that cannot be asked (no poll), a broken pipe is
    taken to be stdout's."""
    import sys

    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True


def leave_closed_stdout() -> int:
    """End quietly as Unix tools do when nobody reads stdout any more: whatever is still buffered
    (and the interpreter's last flush) goes to /dev/null instead of raising "Broken pipe" again.
    Returns the exit status, CLOSED_STDOUT_EXIT."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return CLOSED_STDOUT_EXIT


def raw_file_names() -> None:
    """Print file names that are not valid UTF-8 as their bytes, as `ls` does, instead of failing
    with UnicodeEncodeError under a strict UTF-8 locale (Python decodes such names to surrogates)."""
    import sys

    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and getattr(stream, "errors", "") == "strict":
            try:
                reconfigure(errors="surrogateescape")
            except (ValueError, OSError):
                pass


def interrupted_exit_code() -> int:
    """128 + the signal number, as a shell reports a process stopped by that signal."""
    from ..errors import stop_requested

    return 143 if stop_requested() == "SIGTERM" else 130
