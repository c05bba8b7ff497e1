"""Who this process is in a multi-process run, read from the environment (no JAX import).

Sources, first match wins:

* Keras' own variables, documented with `keras.distribution.initialize()`:
  ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator ``host:port``, or every process's address
  with the coordinator first), ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and
  ``KERAS_DISTRIBUTION_PROCESS_ID``. `edgecls.distributed.launch` sets them.
* SLURM, when the process was started by ``srun`` with more than one task: the same variables
  `jax.distributed.initialize()` detects itself (``SLURM_NTASKS``, ``SLURM_PROCID``, ...); JAX
  then picks the coordinator (the step's first node) and gives each task its own GPU.

Timeouts, in seconds: ``EDGECLS_JOIN_TIMEOUT`` (every process must have joined by then; hosts
started by hand start minutes apart, hence the 300 s default, JAX's own) and
``EDGECLS_PEER_TIMEOUT`` (a peer silent this long is lost and the run stops).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping

from ..errors import OptionError

ADDRESSES, NUM_PROCESSES, PROCESS_ID = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                                        "KERAS_DISTRIBUTION_PROCESS_ID")
JOIN_TIMEOUT, PEER_TIMEOUT = "EDGECLS_JOIN_TIMEOUT", "EDGECLS_PEER_TIMEOUT"
DEFAULT_JOIN_TIMEOUT = 300.0
# Long enough for a step that holds the GIL for a while (the watchdog beats from a Python
# thread) and well under JAX's own 100 s heartbeat timeout, so the clear message comes first.
DEFAULT_PEER_TIMEOUT = 60.0
_SLURM = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


@dataclass(frozen=True)
class Settings:
    """One process's place in a run; `num_processes == 1` is an ordinary single-process run."""

    num_processes: int = 1
    process_id: int = 0
    coordinator: str | None = None     # host:port of process 0; None: JAX finds it (SLURM)
    join_timeout: float = DEFAULT_JOIN_TIMEOUT
    peer_timeout: float = DEFAULT_PEER_TIMEOUT
    source: str = "single"             # "single", "env" (KERAS_DISTRIBUTION_*) or "slurm"

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def is_writer(self) -> bool:
        """Process 0 alone writes checkpoints, the model, its manifest and reports."""
        return self.process_id == 0

    def describe_coordinator(self) -> str:
        """Process 0 and where it listens, for messages."""
        return f"process 0 at {self.coordinator}" if self.coordinator else "process 0 (the SLURM step's first node)"


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env.get(name, "").strip()
    try:
        value = int(raw)
    except ValueError:
        raise OptionError(f"{name}={raw!r}: expected a whole number >= {minimum}") from None
    if value < minimum:
        raise OptionError(f"{name}={raw!r}: expected a whole number >= {minimum}")
    return value


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise OptionError(f"{name}={raw!r}: expected a number of seconds > 0")
    return value


def _address(name: str, raw: str) -> str:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OptionError(f"{name}: {raw!r} is not a host:port address (for example 10.0.0.1:1234)")
    return f"{host}:{port}"


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """The settings the environment describes (single-process when it describes none)."""
    env = os.environ if env is None else env
    timeouts = {"join_timeout": _seconds(env, JOIN_TIMEOUT, DEFAULT_JOIN_TIMEOUT),
                "peer_timeout": _seconds(env, PEER_TIMEOUT, DEFAULT_PEER_TIMEOUT)}
    if env.get(NUM_PROCESSES, "").strip():
        count = _int(env, NUM_PROCESSES, 1)
        if count == 1:
            return Settings(**timeouts)
        if not env.get(PROCESS_ID, "").strip():
            raise OptionError(f"{NUM_PROCESSES}={count} but {PROCESS_ID} is not set: give each process its "
                              f"number, 0 (the coordinator) to {count - 1}")
        process_id = _int(env, PROCESS_ID, 0)
        if process_id >= count:
            raise OptionError(f"{PROCESS_ID}={process_id}: expected 0 to {count - 1} for {count} processes")
        addresses = [a for a in env.get(ADDRESSES, "").split(",") if a.strip()]
        if not addresses:
            raise OptionError(f"{NUM_PROCESSES}={count} but {ADDRESSES} is not set: give the coordinator's "
                              "host:port (process 0's machine, a free port), the same on every process")
        if len(addresses) > 1 and len(addresses) != count:
            raise OptionError(f"{ADDRESSES} lists {len(addresses)} addresses for {count} processes: give one "
                              "per process (the coordinator first) or the coordinator alone")
        return Settings(count, process_id, _address(ADDRESSES, addresses[0]), source="env", **timeouts)
    if all(env.get(k, "").strip() for k in _SLURM) and _int(env, "SLURM_NTASKS", 1) > 1:
        count = _int(env, "SLURM_NTASKS", 1)
        process_id = _int(env, "SLURM_PROCID", 0)
        if process_id >= count:
            raise OptionError(f"SLURM_PROCID={process_id}: expected 0 to {count - 1} for SLURM_NTASKS={count}")
        return Settings(count, process_id, None, source="slurm", **timeouts)
    return Settings(**timeouts)
