"""Signal handlers that belong to the process that installed them.

A library that forks hands its children edgecls's SIGINT/SIGTERM handlers: OpenVINO's telemetry
sends each event from a forked child and ends it with SIGTERM after a timeout; multiprocessing
forks too. A Python handler only runs between bytecodes, so a child blocked in C (getaddrinfo
without a network) never acts on SIGTERM and its parent waits for it at exit (`make quickstart`
once hung there); asyncio's handler in a child would even pass the signal to the parent's event
loop through the inherited wake-up socket. Handlers installed with `install` (or claimed with
`own`) are put back to Python's defaults in every forked child, and act as the default if one
runs in another process all the same. Standard library only.
"""
from __future__ import annotations

import os
import signal
from typing import Any, Callable

_OWNED: dict[int, Any] = {}  # signal -> edgecls's handler for it (what a forked child must not keep)
_HOOKED = [False]


def _default(sig: int) -> Any:
    """Python's own disposition: Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process."""
    return signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL


def _reset_in_child() -> None:
    for sig, handler in list(_OWNED.items()):
        try:
            if signal.getsignal(sig) is handler:
                signal.signal(sig, _default(sig))
        except (ValueError, OSError):  # not the main thread of the main interpreter: nothing to undo
            pass
    _OWNED.clear()


def own(sig: int) -> None:
    """Claim the handler now set for `sig` (one edgecls installed some other way, such as
    asyncio's `add_signal_handler`): forked children get Python's default instead."""
    if not _HOOKED[0]:
        os.register_at_fork(after_in_child=_reset_in_child)
        _HOOKED[0] = True
    _OWNED[sig] = signal.getsignal(sig)


def install(sig: int, handler: Callable[[int, Any], Any]) -> Any:
    """`signal.signal(sig, handler)` for this process only (see the module's note); returns the
    handler it replaces."""
    pid = os.getpid()

    def in_this_process(signum: int, frame: Any) -> Any:
        if os.getpid() != pid:  # a child forked past the at-fork reset (by C code): the default
            signal.signal(signum, _default(signum))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return None
        return handler(signum, frame)

    previous = signal.signal(sig, in_this_process)
    own(sig)
    return previous
