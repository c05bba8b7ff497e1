"""What every command module shares: the lazily created consoles, escaped output, the error
handling that turns library errors into one red line, and the checks that only the command line
has (output folders, sizes typed as text)."""
from __future__ import annotations

from functools import wraps
from pathlib import Path
from typing import Any, Callable, Optional

import typer

from ..errors import EdgeclsError, OptionError, stop_requested
from .exits import describe_os_error, interrupted_exit_code, message


class LazyConsole:
    """A Rich console created on first use, so commands that print plain lines never import Rich."""

    def __init__(self, stderr: bool = False):
        self._stderr = stderr
        self._console = None

    def get(self):
        """The Rich console itself (for progress bars and the layers below)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.get(), name)


err = LazyConsole(stderr=True)
show = LazyConsole()


def escape(text: Any) -> str:
    """User-supplied text (paths, labels, messages) made safe to print through Rich markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


def _stopped() -> typer.Exit:
    terminated = interrupted_exit_code() == 143
    err.print("terminated (SIGTERM); stopped and cleaned up" if terminated else "interrupted; stopped and cleaned up",
              markup=False, highlight=False)
    return typer.Exit(interrupted_exit_code())


def friendly(fn: Callable) -> Callable:
    """Turn edgecls errors into one red line and exit code 2; Ctrl-C into 130 and SIGTERM into
    143, after the command's own clean-up has run."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            result = fn(*args, **kwargs)
        except EdgeclsError as exc:
            if stop_requested():  # an interrupt that surfaced as another error
                raise _stopped() from None
            err.print(f"[bold red]error:[/] {escape(message(exc))}", highlight=False)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            raise _stopped() from None
        except OSError as exc:  # the machine's state (disk full, permissions, a file where a folder goes)
            err.print(f"[bold red]error:[/] {escape(describe_os_error(exc))}", highlight=False)
            raise typer.Exit(2) from None
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
