"""Which rows of the training data each process feeds (numpy only).

Every process computes the same global batch (the epoch's permutation is seeded by (seed,
epoch), as in a single-process run) and feeds only its consecutive slice of it. Keras'
`DataParallel` on JAX assembles the global batch from the processes' slices in process order
(`jax.make_array_from_process_local_data`), so the model sees exactly the batch a single process
would, gradients are those of the whole batch (all-reduced), and across the processes each image
is read once per epoch. Slicing epochs instead (process k taking every k-th image) would train on
other batches than a single-process run and could not match it.

The slices must have the same size in every process: measured with JAX 0.10.2 and Keras 3.12,
unequal slices do not fail but silently train on inconsistent batches (the processes then report
different losses), and unequal step counts hang in the first unmatched all-reduce. Hence the
errors below instead of a tail batch that does not divide.
"""
from __future__ import annotations

import numpy as np

from ..errors import OptionError


def batch_count(count: int, batch_size: int, multiple: int = 1) -> int:
    """Batches in an epoch of `count` rows: the full ones, plus the tail when it holds at least
    `multiple` rows (the global device count; the tail is cut to a multiple of it)."""
    return count // batch_size + (1 if count % batch_size >= multiple else 0)


def global_batch(order: np.ndarray, index: int, batch_size: int, multiple: int = 1) -> np.ndarray:
    """Rows of global batch `index` of an epoch ordered by `order`, cut to a multiple of
    `multiple` and sorted (sequential reads from the cache)."""
    rows = order[index * batch_size : (index + 1) * batch_size]
    return np.sort(rows[: len(rows) - len(rows) % multiple])


def local_rows(rows: np.ndarray, process_id: int, num_processes: int) -> tuple[np.ndarray, int]:
    """This process's consecutive share of one global batch and its offset in it (the position
    of its first row: per-row random draws of the global batch start there)."""
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise OptionError(f"process {process_id} of {num_processes}: expected 0 <= process < count")
    if len(rows) % num_processes:
        raise OptionError(f"a batch of {len(rows)} images does not split evenly over {num_processes} processes; "
                          "the batch size must be a multiple of the total device count")
    share = len(rows) // num_processes
    start = process_id * share
    return rows[start : start + share], start


def in_global_order(stacked: np.ndarray, sizes: list[int]) -> np.ndarray:
    """Rows gathered from every process (`stacked[p]`: process p's shares of consecutive batches,
    of `sizes` rows each) put back in the global batches' order: batch by batch, each batch's
    shares in process order."""
    out, start = [], 0
    for size in sizes:
        out.append(stacked[:, start : start + size].reshape(-1, *stacked.shape[2:]))
        start += size
    return np.concatenate(out) if out else stacked.reshape(-1, *stacked.shape[2:])
