"""Moving arrays between the processes of a run (JAX's multihost utilities over the run's
collectives, gloo on CPUs): features computed on each process's share of the batches gathered
back into the order one process would have computed them in, and arrays only process 0 holds
(a checkpoint on its disk, a fitted head) handed to every process."""
from __future__ import annotations

import numpy as np

from .sharding import in_global_order


def gather_batches(parts: list[np.ndarray], num_processes: int) -> np.ndarray:
    """Every process's rows of each batch, batch after batch, each batch's shares in process
    order: what one process feeding whole batches would have produced. `parts`: this process's
    share of each batch (the same sizes in every process, as `sharding.local_rows` makes them)."""
    local = np.concatenate(parts)
    if num_processes == 1:
        return local
    from jax.experimental import multihost_utils

    # Back to the parts' dtype: JAX without 64-bit types hands int64 targets back as int32.
    stacked = np.asarray(multihost_utils.process_allgather(local, tiled=False)).astype(local.dtype, copy=False)
    return in_global_order(stacked, [len(p) for p in parts])


def broadcast(arrays: list[np.ndarray], is_source: bool, num_processes: int) -> list[np.ndarray]:
    """Process 0's `arrays` in every process; the others pass arrays of the same shapes and
    dtypes (their values are ignored)."""
    arrays = [np.asarray(a) for a in arrays]
    if num_processes == 1 or not sum(a.nbytes for a in arrays):
        return arrays
    from jax.experimental import multihost_utils

    # One buffer of bytes: every dtype crosses unchanged (int64 step counters too, where JAX
    # runs without 64-bit types), and one collective, compiled once, serves any checkpoint.
    raw = np.concatenate([np.ascontiguousarray(a).reshape(-1).view(np.uint8) for a in arrays])
    received = np.asarray(multihost_utils.broadcast_one_to_all(raw, is_source=is_source), np.uint8)
    out, start = [], 0
    for a in arrays:
        out.append(received[start : start + a.nbytes].view(a.dtype).reshape(a.shape).copy())
        start += a.nbytes
    return out
