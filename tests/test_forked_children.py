"""Forked children do not keep edgecls's SIGINT/SIGTERM handlers, and OpenVINO's telemetry is
declined unless the user decided (the `make quickstart` hang at exit: OpenVINO's telemetry child,
stuck in getaddrinfo offline, had inherited the CLI's SIGTERM handler and ignored terminate())."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A child forked (from a thread, as the telemetry sender forks) blocks in a C call; its parent
# terminates it the way multiprocessing does. With edgecls's handler left in the child, the signal
# interrupts libc's sleep and the handler raises KeyboardInterrupt there: exit code 1 and a
# traceback. With the default restored, the kernel ends it at once: -15, nothing printed.
FORK_AND_TERMINATE = """
import ctypes, multiprocessing as mp, signal, sys, threading
# What the process started with: a child must get exactly that back (an ignored SIGINT stays ignored).
STARTED_WITH = {{sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}}
{install}
def block():
    print("child handlers:", signal.getsignal(signal.SIGTERM) is STARTED_WITH[signal.SIGTERM],
          signal.getsignal(signal.SIGINT) is STARTED_WITH[signal.SIGINT], flush=True)
    ctypes.CDLL(None).sleep(30)
def run():
    child = mp.get_context("fork").Process(target=block, daemon=True)
    child.start()
    child.join(1.5)
    child.terminate()
    child.join(10)
    print("exitcode", child.exitcode, flush=True)
thread = threading.Thread(target=run)
thread.start()
thread.join()
print("parent handler kept:", callable(signal.getsignal(signal.SIGTERM))
      and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL, flush=True)
"""

INSTALLERS = {
    "cli": "from edgecls.cli.exits import install_sigterm; install_sigterm()",
    "stream": "from edgecls.stream import install_signal_handlers\n"
              "class S:\n    def stop(self): pass\n"
              "install_signal_handlers(S())",
}


def _python(code: str, sigint: str = "default", **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter whose SIGINT starts as `sigint` says: "default", or
    "ignored" as under nohup or in a background job of a script (and in some CI runners)."""
    def start():
        signal.signal(signal.SIGINT, signal.SIG_IGN if sigint == "ignored" else signal.SIG_DFL)

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, preexec_fn=start)


@pytest.mark.parametrize("sigint", ["default", "ignored"])
@pytest.mark.parametrize("installer", sorted(INSTALLERS))
def test_a_forked_child_gets_the_default_signal_handlers(installer, sigint):
    """Whatever SIGINT started as (the suite itself may run with it ignored), the child gets what
    the process started with, never edgecls's handler."""
    proc = _python(FORK_AND_TERMINATE.format(install=INSTALLERS[installer]), sigint=sigint)
    assert proc.returncode == 0, proc.stderr
    assert "child handlers: True True" in proc.stdout, proc.stdout
    assert "exitcode -15" in proc.stdout, proc.stdout + proc.stderr
    assert "parent handler kept: True" in proc.stdout
    assert "Traceback" not in proc.stderr and "KeyboardInterrupt" not in proc.stderr, proc.stderr


CHECK_TELEMETRY = """
from edgecls.engines.openvino import import_openvino
import_openvino()
import openvino_telemetry
print("consent:", openvino_telemetry.Telemetry().consent)
"""


def test_openvino_telemetry_is_declined_unless_the_user_decided(tmp_path):
    # Not imported here: OpenVINO's import in the test process would send its own event.
    if importlib.util.find_spec("openvino") is None:
        pytest.skip("the openvino extra is not installed")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    proc = _python(CHECK_TELEMETRY, HOME=str(fresh))
    assert proc.returncode == 0, proc.stderr
    assert "consent: False" in proc.stdout, proc.stdout
    assert (fresh / "intel" / "openvino_telemetry").read_text().strip() == "0"
    # Someone who opted in keeps their choice: the file is left alone. (CI=true: OpenVINO's own
    # switch for CI jobs, so that this test never sends an event itself.)
    decided = tmp_path / "decided"
    (decided / "intel").mkdir(parents=True)
    (decided / "intel" / "openvino_telemetry").write_text("1")
    proc = _python(CHECK_TELEMETRY, HOME=str(decided), CI="true")
    assert proc.returncode == 0, proc.stderr
    assert (decided / "intel" / "openvino_telemetry").read_text().strip() == "1"


KEEPS_IGNORED = """
import signal
from edgecls.cli.exits import install_sigterm
from edgecls.stream import install_signal_handlers
class S:
    def stop(self): pass
install_sigterm()
install_signal_handlers(S())
print("sigint ignored:", signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
      "sigterm handled:", callable(signal.getsignal(signal.SIGTERM)), flush=True)
"""


def test_an_ignored_sigint_stays_ignored():
    """nohup and background jobs start a process with SIGINT ignored: edgecls never installs a
    handler over that decision (SIGTERM, not ignored, still stops it cleanly)."""
    proc = _python(KEEPS_IGNORED, sigint="ignored")
    assert proc.returncode == 0, proc.stderr
    assert "sigint ignored: True sigterm handled: True" in proc.stdout, proc.stdout


# A stop whose KeyboardInterrupt lands in a gc callback (JAX registers one) or a __del__: Python
# prints "Exception ignored in ..." and swallows it. The stop must still happen, with no traceback.
SWALLOWED = """
import gc, os, signal, sys, time
from edgecls.cli.exits import install_sigterm
from edgecls.errors import stop_requested
install_sigterm()
landed = []
def callback(phase, info):
    if phase == "start" and not landed:
        landed.append(1)
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(1000):   # the handler runs on one of these bytecodes, inside the callback
            pass
gc.callbacks.append(callback)
try:
    gc.collect()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sum(range(100))
    print("not stopped", flush=True)
except KeyboardInterrupt:
    print("stopped by", stop_requested(), "landed", bool(landed), flush=True)
"""


def test_a_stop_swallowed_in_a_gc_callback_is_delivered_again():
    proc = _python(SWALLOWED)
    assert "stopped by SIGTERM landed True" in proc.stdout, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
