"""`edgecls predict`'s option checks and loop, and a plain call of it run without Typer or Rich.

A cold `edgecls predict` on a device pays for every import; Typer and Rich cost about as much
as OpenCV. `edgecls.cli.main` calls `run_plain_predict` first: when the command line is a plain
predict call it runs here and exits; anything else (help, unknown options, --explain) returns to
the full command line, whose `predict` shares the checks and the loop below.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import EdgeclsError, ImageError
from .exits import (describe_os_error, install_sigterm, interrupted_exit_code, leave_closed_stdout, message,
                    raw_file_names, stdout_closed)


def check_predict_options(top_k: int, threads: int | None, activation: str | None, resize: str | None = None,
                          interpolation: str | None = None) -> None:
    """The ranges of predict's options, checked before the model is opened."""
    from .. import checks
    from ..runtime import check_activation

    checks.at_least("top_k", top_k, 1)
    checks.threads("threads", threads)
    check_activation(activation)
    check_preprocessing_options(resize, interpolation)


def check_preprocessing_options(resize: str | None, interpolation: str | None) -> None:
    """--resize and --interpolation name known modes (checked before a model is opened)."""
    from .. import checks
    from ..preprocess import INTERPOLATIONS, RESIZE_MODES

    checks.one_of("resize", resize, RESIZE_MODES)
    checks.one_of("interpolation", interpolation, INTERPOLATIONS)


def open_classifier(artifact: Path, labels: Path | None, normalization: str | None, resize: str | None,
                    threads: int | None, activation: str | None, interpolation: str | None = None):
    """The Classifier for predict's options."""
    from ..runtime import Classifier

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

            out(json.dumps({"image": str(image), "top_k": [[label, score] for label, score in result], **(more or {})},
                           allow_nan=False))  # strict JSON: the runtime refuses non-finite scores
        else:
            out(f"{image}: " + ", ".join(f"{label} ({score:.3f})" for label, score in result))
            for key, value in (more or {}).items():
                out(f"  {key}: {value}")
    return failed


class NotPlain(Exception):
    """The command line is not a plain predict call: the full command line handles it."""


_VALUED = {"--labels": "labels", "--normalization": "normalization", "--resize": "resize",
           "--interpolation": "interpolation", "--top-k": "top_k", "-k": "top_k", "--threads": "threads",
           "--activation": "activation"}
_CONVERT = {"labels": Path, "top_k": int, "threads": int}


def parse_plain_predict(argv: list[str]) -> dict[str, Any]:
    """The options of a plain predict call (argparse and its imports cost more than this whole
    parser). Anything unusual raises NotPlain and the full command line parses it, help and
    errors included."""
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
            raise NotPlain(f"option {token!r}")
        if not eq:
            if i >= len(argv):
                raise NotPlain(f"{name} needs a value")
            value = argv[i]
            i += 1
        key = _VALUED[name]
        try:
            args[key] = _CONVERT.get(key, str)(value)
        except ValueError:
            raise NotPlain(f"{name} {value!r}") from None
    if len(positional) < 2:
        raise NotPlain("an artifact and at least one image are needed")
    args["artifact"], args["images"] = Path(positional[0]), [Path(p) for p in positional[1:]]
    return args


def run_plain_predict(argv: list[str]) -> None:
    """Run `edgecls predict ...` (argv without the program name) and exit, when it is a plain
    predict call; otherwise return without side effects."""
    if argv[:1] != ["predict"] or "--help" in argv or os.environ.get("EDGECLS_NO_FAST_PATH"):
        return
    try:
        args = parse_plain_predict(argv[1:])
    except NotPlain:
        return
    install_sigterm()
    raw_file_names()

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
        warn(f"error: {message(exc)}")
        sys.exit(2)
    except OSError as exc:
        if isinstance(exc, BrokenPipeError) and stdout_closed():  # `... | head -1` read what it wanted
            sys.exit(leave_closed_stdout())
        warn(f"error: {describe_os_error(exc)}")
        sys.exit(2)
    except KeyboardInterrupt:
        warn("terminated (SIGTERM)" if interrupted_exit_code() == 143 else "interrupted")
        sys.exit(interrupted_exit_code())
    sys.exit(1 if failed else 0)
