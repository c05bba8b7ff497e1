"""Signal handlers that belong to the process that installed them.

A library that forks hands its children edgecls's SIGINT/SIGTERM handlers: OpenVINO's telemetry
sends each event from a forked child and ends it with SIGTERM after a timeout; multiprocessing
forks too. A Python handler only runs between bytecodes, so a child blocked in C (getaddrinfo
without a network) never acts on SIGTERM and its parent waits for it at exit (`make quickstart`
once hung there); asyncio's handler in a child would even pass the signal to the parent's event
loop through the inherited wake-up socket. Handlers installed with `install` (or claimed with
`own`) are put back to Python's defaults in every forked child, and act as the default if one
runs in another process all the same.

A signal that starts ignored (SIG_IGN: `nohup`, a background job of a non-interactive shell,
many CI runners and service managers) stays ignored: `install` leaves it alone and says so by
returning None, since whoever started the process decided it must not stop on that signal.

An exception raised by a handler lands on whatever bytecode runs when the signal arrives; in a
`__del__` method or a garbage-collector callback Python prints "Exception ignored in ..." and
swallows it, so the stop would be lost. `redeliver_swallowed_stops` catches that case and
raises the stop again at the next bytecode of ordinary code. Standard library only.
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


def ignored(sig: int) -> bool:
    """Whether `sig` was set to be ignored (by this process's parent, most often)."""
    return signal.getsignal(sig) is signal.SIG_IGN


def install(sig: int, handler: Callable[[int, Any], Any]) -> Any:
    """`signal.signal(sig, handler)` for this process only (see the module's note); returns the
    handler it replaces, or None where `sig` is ignored and was left so."""
    if ignored(sig):
        return None
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



_REDELIVERING = [False]


def redeliver_swallowed_stops(stop_signal: Callable[[], int | None]) -> None:
    """Where a KeyboardInterrupt raised by a stop handler is swallowed (it landed in a `__del__` or
    a gc callback, where Python can only report it), deliver the stop again, to be raised at the
    next bytecode of ordinary code, instead of printing a traceback. `stop_signal()` names the
    signal that asked the process to stop (whose handler raises), or None: then the exception was
    not a stop and goes to the previous hook as before. Installed once per process."""
    import sys

    if _REDELIVERING[0]:
        return
    _REDELIVERING[0] = True
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        signum = stop_signal() if isinstance(unraisable.exc_value, KeyboardInterrupt) else None
        if signum is None:
            previous(unraisable)
            return
        try:
            _deliver_soon(signum)
        except KeyboardInterrupt:  # another stop arrived inside this hook: deliver that one too
            _deliver_soon(signum)

    sys.unraisablehook = hook


def _deliver_soon(signum: int) -> None:
    """Run `signum`'s Python handler in the main thread once the current hook has returned: from a
    short-lived thread, as if the signal had arrived again (delivered from here, it would run at
    the hook's next bytecode and be swallowed with it). A redelivery that lands in such a place
    again comes back to the hook and is delivered again."""
    import _thread
    import threading
    import time

    def later() -> None:
        time.sleep(0.01)
        _thread.interrupt_main(signum)

    threading.Thread(target=later, name="edgecls-stop-redelivery", daemon=True).start()
