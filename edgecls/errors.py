"""User-facing errors: each names the file or option at fault and what was expected."""
from __future__ import annotations


class EdgeclsError(Exception):
    """An error the CLI prints as one clear line (no traceback)."""


class ImageError(EdgeclsError):
    """An image file could not be decoded into an RGB picture."""


class ModelError(EdgeclsError):
    """A model artifact is missing, truncated, or does not match its manifest."""


class DatasetError(EdgeclsError):
    """An image-folder dataset is unusable as a whole."""


class OptionError(EdgeclsError):
    """An option value is out of range or not one of the allowed values. `options`: the
    parameter names the message mentions (the command line spells them as its flags)."""

    def __init__(self, message: str, *options: str):
        super().__init__(message)
        self.options = options


def missing_extra(package: str, extra: str) -> EdgeclsError:
    """Error for an optional dependency that is not installed."""
    return EdgeclsError(
        f"{package} is not installed; install it with: pip install 'edgecls[{extra}]'"
    )


_STOP = {"signal": None}


def request_stop(signal_name: str) -> None:
    """Record that the user or the system asked the process to stop (SIGINT, SIGTERM)."""
    _STOP["signal"] = signal_name


def stop_requested() -> str | None:
    """The signal that asked this process to stop, or None. Code that catches broad exceptions
    (converters fail in many ways) checks this and re-raises KeyboardInterrupt: an interrupt that
    lands inside a C extension can surface as another exception type."""
    return _STOP["signal"]
