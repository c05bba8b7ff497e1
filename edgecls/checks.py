"""Range and choice checks of option values, for the library's entry points (TrainConfig,
export, bench, tune, ...), run before any slow work.

Each raises OptionError naming the option by its parameter name (`learning_rate`), with that
name as the message's first word; the command line shows it as its flag (`--learning-rate`).
"""
from __future__ import annotations

import math
from typing import Sequence

from .errors import OptionError

MAX_THREADS = 1024  # what an engine's C++ int takes with room to spare; no machine has more cores


def at_least(option: str, value: float | None, low: float) -> None:
    """`value` (when given) is finite and at least `low`."""
    if value is not None and not (value >= low and math.isfinite(value)):
        raise OptionError(f"{option} must be at least {low:g}, got {value!r}", option)


def positive(option: str, value: float | None, unit: str = "number") -> None:
    """`value` (when given) is finite and above zero."""
    if value is not None and not (value > 0 and math.isfinite(value)):
        raise OptionError(f"{option} must be a positive {unit}, got {value!r}", option)


def within(option: str, value: float | None, low: float, high: float, low_open: bool = False,
           high_open: bool = False) -> None:
    """`value` (when given) lies in the interval, each end open or closed."""
    if value is None:
        return
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise OptionError(f"{option} must be in {interval}, got {value!r}", option)


def one_of(option: str, value: str | None, allowed: Sequence[str]) -> None:
    """`value` (when given) is one of `allowed`."""
    if value is not None and value not in allowed:
        raise OptionError(f"{option} {value!r}: expected one of {', '.join(allowed)}", option)


def threads(option: str, value: int | None) -> None:
    """Engine threads: at least 1, and a number an engine's C++ int takes."""
    if value is not None and not 1 <= value <= MAX_THREADS:
        raise OptionError(f"{option} must be from 1 to {MAX_THREADS}, got {value}", option)


def names(option: str, value: str | list[str], example: str) -> list[str]:
    """A name or a comma list of names (or a list of such strings), no item empty; the names."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(part.strip() for item in items for part in item.split(",")):
        raise OptionError(f"{option} {value!r}: expected a name or a comma list of names, such as {example}", option)
    return [part.strip() for item in items for part in item.split(",")]
