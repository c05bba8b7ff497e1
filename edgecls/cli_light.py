"""The light half of the command line: option checks, escaped output, the predict loop, and a
fast path that runs `edgecls predict` without importing Typer or Rich.

A cold `edgecls predict` on a device pays for every import; Typer and Rich cost about as much
as OpenCV. `edgecls.cli` calls `fast_predict()` before it imports them: when the command line is
a plain predict call it runs here and exits; anything else (help, unknown options, --explain)
falls through to the full Typer command line, which shares `run_predict`.
"""
from __future__ import annotations

import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import EdgeclsError, ImageError, OptionError

ACTIVATION_HELP = ("The model's final activation, for a model without a manifest whose graph does not show it: "
                   "softmax (outputs are probabilities, used as they are) or none (logits; edgecls applies softmax).")
RESIZE_HELP = "stretch | center_crop (default: the manifest's, else stretch)."
INTERPOLATION_HELP = ("area | linear | cubic: how pixels are resampled (default: the manifest's, else area, the "
                      "anti-aliased box filter). For a model trained with another resize, e.g. linear for TF-slim "
                      "or tf.image.resize bilinear (no anti-aliasing).")


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


def escape(text: Any) -> str:
    """User-supplied text (paths, labels, messages) made safe to print through Rich markup."""
    from rich.markup import escape as rich_escape

    return rich_escape(str(text))


# --- option checks: every range is checked before any work starts -------------------------
def at_least(option: str, value: float | None, low: float) -> None:
    """`value` (when given) is finite and at least `low`."""
    if value is not None and not (value >= low and math.isfinite(value)):
        raise OptionError(f"{option} must be at least {low:g}, got {value!r}")


def positive(option: str, value: float | None) -> None:
    """`value` (when given) is finite and above zero."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise OptionError(f"{option} must be a positive number, got {value!r}")


def within(option: str, value: float | None, low: float, high: float, low_open: bool = False,
           high_open: bool = False) -> None:
    """`value` (when given) lies in the interval, each end open or closed."""
    if value is None:
        return
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise OptionError(f"{option} must be in {interval}, got {value!r}")


def one_of(option: str, value: str | None, allowed: Sequence[str]) -> None:
    """`value` (when given) is one of `allowed`."""
    if value is not None and value not in allowed:
        raise OptionError(f"{option} {value!r}: expected one of {', '.join(allowed)}")


def folder_option(option: str, path: Path | None) -> None:
    """An output folder option must not name an existing file (found before any work is done)."""
    if path is not None and path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path}: is a file, expected a folder (it is created when missing)")


def threads_option(threads: int | None) -> None:
    """Engine threads: at least 1, and a number an engine's C++ int takes."""
    if threads is not None and not 1 <= threads <= 1024:
        raise OptionError(f"--threads must be from 1 to 1024, got {threads}")


def check_predict_options(top_k: int, threads: int | None, activation: str | None, resize: str | None = None,
                          interpolation: str | None = None) -> None:
    """The ranges of predict's options, shared by the fast path and the full command line."""
    at_least("--top-k", top_k, 1)
    threads_option(threads)
    one_of("--activation", activation, ("softmax", "none"))
    preprocessing_options(resize, interpolation)


def preprocessing_options(resize: str | None, interpolation: str | None) -> None:
    """--resize and --interpolation name known modes (checked before a model is opened)."""
    from .preprocess import INTERPOLATIONS, RESIZE_MODES

    one_of("--resize", resize, RESIZE_MODES)
    one_of("--interpolation", interpolation, INTERPOLATIONS)


# --- predict ---------------------------------------------------------------------------------
def open_classifier(artifact: Path, labels: Path | None, normalization: str | None, resize: str | None,
                    threads: int | None, activation: str | None, interpolation: str | None = None):
    """The Classifier for predict's options."""
    from .runtime import Classifier

    return Classifier.from_artifact(artifact, labels=labels, normalization=normalization, resize=resize,
                                    interpolation=interpolation, activation=activation, num_threads=threads)


def run_predict(clf, images: Sequence[Path], top_k: int, as_json: bool, out: Callable[[str], None],
                warn: Callable[[str], None], extra: Callable[[Path], dict[str, str] | None] | None = None) -> int:
    """Classify each image and print one line each (plain text, never markup); unreadable images
    are reported and skipped. Returns the number skipped."""
    failed = 0
    for image in images:
        try:
            result = clf.predict(image, top_k)
        except ImageError as exc:
            failed += 1
            warn(f"skipped {exc}")
            continue
        more = extra(image) if extra else None
        if as_json:
            import json

            out(json.dumps({"image": str(image), "top_k": [[label, score] for label, score in result], **(more or {})}))
        else:
            out(f"{image}: " + ", ".join(f"{label} ({score:.3f})" for label, score in result))
            for key, value in (more or {}).items():
                out(f"  {key}: {value}")
    return failed


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: the file, then what went wrong."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


class _Fallback(Exception):
    """The command line is not a plain predict call: let the full command line handle it."""


_VALUED = {"--labels": "labels", "--normalization": "normalization", "--resize": "resize",
           "--interpolation": "interpolation", "--top-k": "top_k", "-k": "top_k", "--threads": "threads",
           "--activation": "activation"}
_CONVERT = {"labels": Path, "top_k": int, "threads": int}


def _parse_predict(argv: list[str]) -> dict[str, Any]:
    """The plain predict options (argparse and its imports cost more than this whole parser).
    Anything unusual raises _Fallback and the full command line parses it, help and errors included."""
    args: dict[str, Any] = {"labels": None, "normalization": None, "resize": None, "interpolation": None, "top_k": 3,
                            "threads": None, "activation": None, "as_json": False}
    positional: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--json":
            args["as_json"] = True
            continue
        if not token.startswith("-") or token == "-":
            positional.append(token)
            continue
        name, eq, value = token.partition("=")
        if name not in _VALUED:
            raise _Fallback(f"option {token!r}")
        if not eq:
            if i >= len(argv):
                raise _Fallback(f"{name} needs a value")
            value = argv[i]
            i += 1
        key = _VALUED[name]
        try:
            args[key] = _CONVERT.get(key, str)(value)
        except ValueError:
            raise _Fallback(f"{name} {value!r}") from None
    if len(positional) < 2:
        raise _Fallback("an artifact and at least one image are needed")
    args["artifact"], args["images"] = Path(positional[0]), [Path(p) for p in positional[1:]]
    return args


def install_sigterm() -> None:
    """SIGTERM (a service stop, `timeout`, a container shutdown) unwinds like Ctrl-C: the same
    clean-up runs (finally blocks, temporary folders) and the command says it was stopped. Both
    record the request, so that code catching broad exceptions can tell an interrupt apart."""
    from .errors import request_stop

    def handler(signum, frame):
        request_stop("SIGTERM" if signum == signal.SIGTERM else "SIGINT")
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler, None):
            signal.signal(sig, handler)


def interrupted_exit_code() -> int:
    """128 + the signal number, as a shell reports a process stopped by that signal."""
    from .errors import stop_requested

    return 143 if stop_requested() == "SIGTERM" else 130


def fast_predict() -> None:
    """Run `edgecls predict ...` here and exit, when the process is the edgecls command and the
    call is a plain predict; otherwise return without side effects."""
    argv = sys.argv[1:]
    launched = Path(sys.argv[0]).name in ("edgecls", "edgecls.exe", "cli.py")
    if not launched or argv[:1] != ["predict"] or "--help" in argv or os.environ.get("EDGECLS_NO_FAST_PATH"):
        return
    try:
        args = _parse_predict(argv[1:])
    except _Fallback:
        return
    install_sigterm()

    def warn(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        check_predict_options(args["top_k"], args["threads"], args["activation"], args["resize"],
                              args["interpolation"])
        clf = open_classifier(args["artifact"], args["labels"], args["normalization"], args["resize"],
                              args["threads"], args["activation"], args["interpolation"])
        failed = run_predict(clf, args["images"], args["top_k"], args["as_json"],
                             lambda line: print(line, flush=True), warn)
    except EdgeclsError as exc:
        warn(f"error: {exc}")
        sys.exit(2)
    except OSError as exc:
        warn(f"error: {describe_os_error(exc)}")
        sys.exit(2)
    except KeyboardInterrupt:
        warn("terminated (SIGTERM)" if interrupted_exit_code() == 143 else "interrupted")
        sys.exit(interrupted_exit_code())
    sys.exit(1 if failed else 0)
