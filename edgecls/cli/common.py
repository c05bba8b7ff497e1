"""What every command module shares: the lazily created consoles, escaped output, the error
handling that turns library errors into one red line, and the checks that only the command line
has (output folders, sizes typed as text)."""
from __future__ import annotations

import sys
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ..errors import EdgeclsError, OptionError, stop_requested
from .exits import describe_os_error, interrupted_exit_code, leave_closed_stdout, message, stdout_closed


class LazyConsole:
    """A Rich console created on first use, so commands that print plain lines never import Rich."""

    def __init__(self, stderr: bool = False):
        self._stderr = stderr
        self._console = None

    def get(self):
        """The Rich console itself (for progress bars and the layers below)."""
        if self._console is None:
            from ..console import make_console

            self._console = make_console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


err = LazyConsole(stderr=True)
show = LazyConsole()


def escape(text: Any) -> str:
    """User-supplied text (paths, labels, messages) made safe to print through Rich markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def print_table(console, table) -> None:
    """Print a Rich table whole. Off a terminal (a CI log, a pipe) Rich assumes 80 columns and would
    cut the cells, numbers included; there the table gets its natural width."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update_width(100_000), table).maximum
    width = console.width
    console.width = max(width, natural)  # print(width=...) can only narrow
    try:
        console.print(table)
    finally:
        console.width = width


def _several_processes():
    """The multi-process session this process belongs to (`edgecls.distributed`), if any."""
    session_module = sys.modules.get("edgecls.distributed.session")  # never imported: no session
    session = session_module.current() if session_module is not None else None
    return session if session is not None and session.distributed else None


def speaks() -> bool:
    """Whether this process reports a result: always, except the other processes of a
    multi-process run, where process 0 speaks for all."""
    session = _several_processes()
    return session is None or session.is_writer


def _leave(code: int, reason: BaseException | str) -> typer.Exit:
    """Exit with `code`; in a multi-process run first tell the other processes why, so they stop
    at once (`Session.abort`, which ends this process)."""
    session = _several_processes()
    if session is not None:
        session.abort(reason, code)
    return typer.Exit(code)


def _stopped() -> typer.Exit:
    terminated = interrupted_exit_code() == 143
    what = "terminated (SIGTERM)" if terminated else "interrupted"
    err.print(f"{what}; stopped and cleaned up", markup=False, highlight=False)
    return _leave(interrupted_exit_code(), what)


def friendly(fn: Callable) -> Callable:
    """Turn edgecls errors into one red line and exit code 2; Ctrl-C into 130 and SIGTERM into
    143, after the command's own clean-up has run. In a multi-process run any failure also stops
    the other processes, with its reason."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except EdgeclsError as exc:
            if stop_requested():  # an interrupt that surfaced as another error
                raise _stopped() from None
            err.print(f"[bold red]error:[/] {escape(message(exc))}", highlight=False)
            raise _leave(2, message(exc)) from None
        except KeyboardInterrupt:
            raise _stopped() from None
        except OSError as exc:  # the machine's state (disk full, permissions, a file where a folder goes)
            if isinstance(exc, BrokenPipeError) and stdout_closed():  # `edgecls ... | head -1`: done
                raise _leave(leave_closed_stdout(), "its stdout was closed") from None
            err.print(f"[bold red]error:[/] {escape(describe_os_error(exc))}", highlight=False)
            raise _leave(2, describe_os_error(exc)) from None
        except Exception as exc:
            if _several_processes() is None:
                raise  # one process: the traceback, as for any bug
            # Most likely a collective that lost its peer (JAX's error); the session names it.
            err.print(f"[bold red]error:[/] {escape(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)}",
                      highlight=False)
            raise _leave(1, exc) from None
        if stop_requested():  # an interrupt swallowed by a broad `except` below: never report success
            raise _stopped()
        return result

    return wrapper


def command(app: typer.Typer, fn: Callable, name: str | None = None, handled: bool = True,
            context_settings: dict | None = None) -> None:
    """Register `fn` as a command of `app`, its edgecls errors shown as one line (`friendly`)."""
    app.command(name, context_settings=context_settings)(friendly(fn) if handled else fn)


def folder_option(option: str, path: Path | None) -> None:
    """An output folder option must not name an existing file (found before any work is done)."""
    if path is not None and path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path}: is a file, expected a folder (it is created when missing)")


def parse_size(value: Optional[str]) -> Optional[tuple[int, int]]:
    """--input-size: N or HxW (also H,W) -> (height, width)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.lower().replace("x", ",").split(",") if v.strip()]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1 or max(parts) > 4096:
        raise OptionError(f"--input-size {value!r}: expected N or HxW with sizes from 1 to 4096, such as 160 or 224x224")
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def comma_list(option: str, value: Optional[str]) -> list[str]:
    """The items of a comma list option (none when not given)."""
    parts = [p.strip() for p in (value or "").split(",") if p.strip()]
    if value is not None and not parts:
        raise OptionError(f"{option} {value!r}: expected a comma list")
    return parts
