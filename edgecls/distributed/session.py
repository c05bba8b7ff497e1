"""Joining a multi-process JAX run with bounded waits, and stopping every process with a clear
message when one is lost or fails.

What JAX 0.10.2 does on its own (measured on CPU with gloo collectives, two processes):

* `jax.distributed.initialize` waits `initialization_timeout` for every process, then aborts the
  process from C++ (SIGABRT, "DEADLINE_EXCEEDED ... RegisterTask") without a Python exception.
* When a process dies, its coordination service aborts the others: after
  `heartbeat_timeout_seconds` when it was not process 0, at once when it was (process 0 hosts the
  service). A collective in flight fails first with "Gloo ... Connection closed by peer".
  The message is a C++ log line under a stack trace; JAX's hook for a Python callback instead
  (`missed_heartbeat_callback`) fails in 0.10.2 (std::bad_cast), so it cannot be used.

So this module sets JAX's timeouts as a backstop and comes first with its own: a timer names a
missing peer or coordinator at start-up, and a watchdog thread posts a heartbeat to the
coordination service's key-value store and reads everyone's, so a silent peer is named and every
process exits with `EXIT_STOPPED` before JAX's heartbeat timeout. A process that fails tells the
others why (`Session.abort`). The one case left to JAX is the loss of process 0 itself: its
peers lose the service with it and JAX aborts them at once (non-zero, "the leader task was
preempted/died"); `edgecls.distributed.launch` and srun then name the process that died.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
from typing import Callable, NoReturn

import numpy as np

from ..errors import EdgeclsError
from . import collectives, sharding
from .settings import ADDRESSES, NUM_PROCESSES, Settings, from_env

EXIT_STOPPED = 75     # stopped because another process was lost or failed (EX_TEMPFAIL: resume it)
EXIT_NOT_JOINED = 69  # not every process joined in time (EX_UNAVAILABLE)
# Keys in the coordination service's store: the watchdog reads everything under _KEYS each beat
# (beats, stops, acknowledgements, done markers); agreements and the end live beside it.
_KEYS, _AGREE, _WRITTEN = "edgecls", "edgecls-agree", "edgecls-written"
_WAIT_CHUNK_MS = 1000  # blocking reads in chunks: Ctrl-C and the watchdog stay responsive

_current: Session | None = None


def initialize(settings: Settings | None = None) -> Session:
    """Join the run the environment (or `settings`) describes; a single-process session when it
    describes none (which holds nothing: a later call may replace it). Must run before anything
    initialises a JAX backend."""
    global _current
    settings = settings or from_env()
    if _current is not None and _current.settings == settings:
        return _current
    if _current is not None and _current.distributed:
        raise EdgeclsError("edgecls.distributed is already initialised with other settings in this process")
    if not settings.distributed:
        _current = Session(settings, None)
        return _current
    try:
        import jax
        from jax._src import distributed as jax_distributed  # the coordination client (not public; orbax uses it too)
    except ImportError:
        raise EdgeclsError("training on several processes needs JAX: pip install 'edgecls[gpu]' "
                           "(or jax for CPU), and KERAS_BACKEND=jax") from None
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        # gloo is 0.10's default already; older JAX had no CPU collectives by default.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX's preemption service catches SIGTERM (to checkpoint at a synchronised step, which
    # edgecls does not use): with it, SIGTERM from a launcher or scheduler would stop nothing.
    jax.config.update("jax_enable_preemption_service", False)
    if settings.is_writer and settings.coordinator:
        # Said before JAX tries: its own report names no port, and the process may crash after it.
        from .ports import port_problem

        problem = port_problem(settings.coordinator)
        if problem:
            raise EdgeclsError(f"could not join the {settings.num_processes}-process run: process 0 cannot serve the "
                               f"coordinator at {settings.coordinator}: {problem} ({ADDRESSES})")
    host = (settings.coordinator or "").rpartition(":")[0].strip("[]")
    # A coordinator on a loopback address serves this machine only: bind there, not on every
    # interface (JAX's default, [::]:port).
    bind = settings.coordinator if host in ("127.0.0.1", "localhost", "::1") else None
    joined = threading.Event()
    timer = threading.Timer(settings.join_timeout, _join_timed_out, (settings, joined))
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator, num_processes=settings.num_processes,
            process_id=settings.process_id, coordinator_bind_address=bind,
            # Backstops behind this module's own timeouts, which fire first with a clear message.
            initialization_timeout=math.ceil(settings.join_timeout) + 10,
            heartbeat_timeout_seconds=2 * math.ceil(settings.peer_timeout) + 5,
            shutdown_timeout_seconds=math.ceil(settings.peer_timeout) + 5)
    except RuntimeError as exc:  # called after JAX started computing, or twice
        raise EdgeclsError(f"could not join the {settings.num_processes}-process run: {exc}") from None
    finally:
        joined.set()
        timer.cancel()
    _current = Session(settings, jax_distributed.global_state.client)
    _current._start_watchdog()
    return _current


def current() -> Session | None:
    """The session `initialize` returned in this process, if any."""
    return _current


def _probe(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _join_timed_out(settings: Settings, joined: threading.Event) -> None:
    if joined.is_set():
        return
    n, me = settings.num_processes, settings.process_id
    if me != 0 and settings.coordinator and not _probe(settings.coordinator):
        why = (f"nothing answers at {settings.coordinator}, the coordinator's address: start process 0 "
               "there, or check the address and the firewall")
    else:
        why = f"not every process joined ({settings.describe_coordinator()} is the coordinator)"
    hint = (f"; start all {n} processes with the same {ADDRESSES} and {NUM_PROCESSES}={n}, "
            f"process ids 0 to {n - 1}" if settings.source == "env" else "")
    _say(me, n, f"gave up after {settings.join_timeout:g} s (EDGECLS_JOIN_TIMEOUT): {why}{hint}")
    os._exit(EXIT_NOT_JOINED)


def _say(me: int, n: int, message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"edgecls: process {me} of {n}: {message}\n")
    sys.stderr.flush()


class Session:
    """This process's place in the run: its index, the writer rule, its share of each batch,
    and the clean ways to agree, finish and fail."""

    def __init__(self, settings: Settings, client):
        self.settings = settings
        self._client = client
        self._cleanups: list[Callable[[], None]] = []
        self._exiting = threading.Lock()
        self._watchdog: _Watchdog | None = None
        self._uses: dict[str, int] = {}

    @property
    def process_id(self) -> int:
        return self.settings.process_id

    @property
    def num_processes(self) -> int:
        return self.settings.num_processes

    @property
    def distributed(self) -> bool:
        return self.settings.distributed

    @property
    def is_writer(self) -> bool:
        """Process 0 alone writes checkpoints, the model, its manifest and reports."""
        return self.settings.is_writer

    def local_rows(self, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """This process's share of a global batch and its offset (see `sharding.local_rows`)."""
        return sharding.local_rows(rows, self.process_id, self.num_processes)

    def gather_batches(self, parts: list[np.ndarray]) -> np.ndarray:
        """Rows computed on this process's share of each batch, gathered from every process into
        the whole batches' order (see `collectives.gather_batches`)."""
        return collectives.gather_batches(parts, self.num_processes)

    def broadcast(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Process 0's arrays in every process (the others pass same-shaped placeholders)."""
        return collectives.broadcast(arrays, self.is_writer, self.num_processes)

    def add_cleanup(self, fn: Callable[[], None]) -> None:
        """Run `fn` (remove temporary files...) before this process exits because of a peer."""
        self._cleanups.append(fn)

    # --- agreeing --------------------------------------------------------------------------
    def check_same(self, name: str, value: str) -> None:
        """Raise a clear error unless every process has the same `value` for `name` (the dataset's
        file list, the config, the steps per epoch...): hosts with different copies of a dataset
        would otherwise train on inconsistent batches."""
        if not self.distributed:
            return
        me, key = self.process_id, self._key("same", name)
        self._client.key_value_set(f"{key}/{me}", value)
        for other in range(self.num_processes):
            theirs = self._wait_for(f"{key}/{other}")
            if theirs != value:
                raise EdgeclsError(f"the processes disagree on {name}: process {me} has {_short(value)}, "
                                   f"process {other} has {_short(theirs)}; every host needs the same data and options")

    def share(self, name: str, value: str | None) -> str:
        """The writer's `value` for `name`, in every process (the others pass None): what only
        process 0 can read, such as a checkpoint's record on its disk."""
        if not self.distributed:
            return value
        key = self._key("share", name)
        if self.is_writer:
            self._client.key_value_set(key, value)
            return value
        return self._wait_for(key)

    def _key(self, kind: str, name: str) -> str:
        """A fresh key per use of a name: every process makes the same calls in the same order,
        so the n-th use means the same thing everywhere (store keys cannot be rewritten)."""
        self._uses[f"{kind}/{name}"] = use = self._uses.get(f"{kind}/{name}", 0) + 1
        return f"{_AGREE}/{kind}/{name}/{use}"

    def _wait_for(self, key: str) -> str:
        """The value of `key` once some process has set it (the watchdog guards against a peer
        that dies meanwhile)."""
        while True:
            try:
                return self._client.blocking_key_value_get(key, _WAIT_CHUNK_MS)
            except Exception as exc:  # JaxRuntimeError DEADLINE_EXCEEDED: not set yet
                if "DEADLINE_EXCEEDED" not in str(exc):
                    raise EdgeclsError(f"lost the coordination service ({self.settings.describe_coordinator()}): "
                                       f"{str(exc).splitlines()[0]}") from None

    # --- ending -----------------------------------------------------------------------------
    def finish(self, result: str | None = None) -> str | None:
        """End a successful run: the others wait until the writer has written its outputs, then
        all leave the coordination service together. The others call it as soon as their part
        is done (from then on their loss no longer stops the writer); the writer calls it last,
        with a `result` text that every process gets back."""
        if not self.distributed:
            return result
        self._client.key_value_set(f"{_KEYS}/done/{self.process_id}", "1")
        if self.is_writer:
            self._client.key_value_set(_WRITTEN, result or "")
        else:
            result = self._wait_for(_WRITTEN)
        if self._watchdog is not None:
            self._watchdog.stop()
        import jax

        jax.distributed.shutdown()
        return result

    def abort(self, reason: str | BaseException, code: int = 1) -> NoReturn:
        """Leave after an error in this process, telling the others why so they stop at once
        with that reason (instead of a peer-lost timeout). A JAX communication error is most
        likely the symptom of a lost peer: the watchdog gets a bounded chance to name it first.
        A single-process session just exits with `code`."""
        if not self.distributed:
            self._run_cleanups()
            raise SystemExit(code)
        if _looks_like_lost_peer(reason) and self._watchdog is not None:
            self._watchdog.join(self.settings.peer_timeout + 3 * self._watchdog.interval)
        text = str(reason).splitlines()[0] if str(reason) else type(reason).__name__
        self._exit(code, None, stop=f"process {self.process_id} failed: {text}")

    def _exit(self, code: int, message: str | None, stop: str | None = None) -> NoReturn:
        """Tell the others (`stop`), say `message`, clean up and leave without interpreter
        finalisation, where JAX's own shutdown would wait for the lost peer."""
        if not self._exiting.acquire(blocking=False):
            while True:  # another thread is already ending the process
                time.sleep(1)
        try:
            if stop is not None:
                self._tell_others(stop)
            if message:
                _say(self.process_id, self.num_processes, message)
            self._run_cleanups()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _run_cleanups(self) -> None:
        for fn in self._cleanups:
            try:
                fn()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass

    def _tell_others(self, reason: str) -> None:
        """Post the stop reason; process 0 hosts the store, so it waits (briefly) until the
        others have read it before it leaves and takes the store with it."""
        try:
            self._client.key_value_set(f"{_KEYS}/stop/{self.process_id}", reason, allow_overwrite=True)
            if not self.is_writer or self._watchdog is None:
                return
            deadline = time.monotonic() + 3 * self._watchdog.interval + 1.0
            while time.monotonic() < deadline:
                entries = dict(self._client.key_value_dir_get(f"{_KEYS}/"))
                # Informed: acknowledged, finished, or stopping for a reason of its own.
                waiting = [p for p in self._watchdog.alive_peers()
                           if not any(f"{_KEYS}/{kind}/{p}" in entries for kind in ("ack", "done", "stop"))]
                if not waiting:
                    return
                time.sleep(0.05)
        except Exception:  # noqa: BLE001 - the store may be gone; leaving matters more
            pass

    def _start_watchdog(self) -> None:
        self._watchdog = _Watchdog(self)
        self._watchdog.start()


def _looks_like_lost_peer(reason: str | BaseException) -> bool:
    text = str(reason).lower()
    return any(word in text for word in ("gloo", "connection closed", "connection reset", "unavailable", "nccl"))


def _short(value: str) -> str:
    return repr(value) if len(value) <= 60 else repr(value[:57] + "...")


class _Watchdog(threading.Thread):
    """Beats every `interval` and reads every process's beat; a peer whose beat has not moved for
    `peer_timeout` is lost, and a stop posted by another process ends this one."""

    def __init__(self, session: Session):
        super().__init__(name="edgecls-watchdog", daemon=True)
        self.session = session
        self.interval = min(1.0, session.settings.peer_timeout / 4)
        self._stop_event = threading.Event()
        me, n = session.process_id, session.num_processes
        self._peers = [p for p in range(n) if p != me]
        self._lost: set[int] = set()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5 * self.interval)

    def alive_peers(self) -> list[int]:
        return [p for p in self._peers if p not in self._lost]

    def run(self) -> None:
        session, client = self.session, self.session._client
        me, timeout = session.process_id, session.settings.peer_timeout
        seen = {p: (None, time.monotonic()) for p in self._peers}
        beat = 0
        while not self._stop_event.is_set():
            beat += 1
            try:
                client.key_value_set(f"{_KEYS}/beat/{me}", str(beat), allow_overwrite=True)
                entries = dict(client.key_value_dir_get(f"{_KEYS}/"))
            except Exception as exc:  # noqa: BLE001 - any failure here means the store is unreachable
                if self._stop_event.is_set():
                    return
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                session._exit(EXIT_STOPPED, f"lost the coordinator ({session.settings.describe_coordinator()}): "
                                            f"{first}; stopping")
            stops = sorted((k, v) for k, v in entries.items()
                           if k.startswith(f"{_KEYS}/stop/") and k != f"{_KEYS}/stop/{me}")
            if stops:
                try:
                    client.key_value_set(f"{_KEYS}/ack/{me}", "1", allow_overwrite=True)
                except Exception:  # noqa: BLE001 - leaving anyway
                    pass
                session._exit(EXIT_STOPPED, f"stopping: {stops[0][1]}")
            now = time.monotonic()
            for p in self._peers:
                if f"{_KEYS}/done/{p}" in entries:
                    continue
                value = entries.get(f"{_KEYS}/beat/{p}")
                if value != seen[p][0]:
                    seen[p] = (value, now)
                elif now - seen[p][1] > timeout:
                    self._lost.add(p)
                    reason = f"process {p} was lost (no heartbeat for {now - seen[p][1]:.0f} s, EDGECLS_PEER_TIMEOUT)"
                    session._exit(EXIT_STOPPED, f"{reason}; stopping", stop=f"{reason}, seen by process {me}")
            self._stop_event.wait(self.interval)
