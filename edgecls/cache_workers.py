"""Building an image cache on all cores: the pixel file reserved on disk first, worker processes
that decode runs of files into their rows, and stopping them on an error or an interrupt.

Rows are written with pwrite, not through a memory map: a full disk is then an OSError in the
worker (reported to the parent), never a SIGBUS that kills it, and a worker that dies anyway is
reported by the executor (BrokenProcessPool) instead of waited for, as multiprocessing.Pool did.
numpy and OpenCV only (edgecls.cache is the light layer).
"""
from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .errors import EdgeclsError, ImageError, stop_requested
from .preprocess import Preprocessing


def decode_range(args: tuple[str, int, list[str], dict, int]) -> tuple[int, list[tuple[int, str]]]:
    """Worker: decode a run of files into their rows of the pixel file; return the failures."""
    pixels_path, offset, files, prep, first = args
    preprocessing = Preprocessing.from_dict(prep)
    h, w = preprocessing.size
    row_bytes = h * w * 3
    errors = []
    fd = os.open(pixels_path, os.O_WRONLY)
    try:
        for i, name in enumerate(files, start=first):
            try:
                row = memoryview(np.ascontiguousarray(preprocessing.load(name), dtype=np.uint8)).cast("B")
            except ImageError as exc:
                errors.append((i, str(exc).removeprefix(f"{name}: ")))
                continue
            done = 0
            while done < len(row):
                done += os.pwrite(fd, row[done:], offset + i * row_bytes + done)
    finally:
        os.close(fd)
    return len(files), errors


def _quiet_worker() -> None:
    """Decoding workers leave signals to the parent: a forked worker would otherwise inherit the
    command line's SIGTERM handler and print a KeyboardInterrupt traceback when it is stopped, and
    Ctrl-C (sent to the whole process group) would interrupt each worker too."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """While the worker processes are forked, SIGINT and SIGTERM only record the request. The
    command line's handler raises KeyboardInterrupt, and raised inside a fork's at-fork hooks
    (logging's lock release) Python ignores it: a traceback, and the build went on as if never
    stopped. The interrupt is raised right after the forks instead."""
    import signal
    import threading

    from .errors import request_stop

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def record(signum, _frame) -> None:
        arrived.append(signum)
        request_stop("SIGTERM" if signum == signal.SIGTERM else "SIGINT")

    deferred = {sig: handler for sig in (signal.SIGINT, signal.SIGTERM)
                if callable(handler := signal.getsignal(sig))}  # Python handlers; SIG_DFL still ends the process
    for sig in deferred:
        signal.signal(sig, record)
    try:
        yield
    finally:
        for sig, handler in deferred.items():
            signal.signal(sig, handler)
    if arrived:
        raise KeyboardInterrupt


def _executor(workers: int):
    """Worker processes: forked while no TensorFlow/JAX runtime is loaded (fast start), else
    spawned, because a fork would copy their threads half-way (spawn needs the usual
    `if __name__ == "__main__":` guard in a calling script)."""
    import multiprocessing as mp
    import sys
    from concurrent.futures import ProcessPoolExecutor

    heavy = any(name in sys.modules for name in ("tensorflow", "jax", "torch"))
    method = "fork" if sys.platform == "linux" and not heavy else "spawn"
    return ProcessPoolExecutor(workers, mp_context=mp.get_context(method), initializer=_quiet_worker)


def _stop(executor) -> None:
    """Stop the workers now (an error or an interrupt): queued work is dropped, running work killed."""
    kill = getattr(executor, "kill_workers", None)  # Python 3.14
    if kill is not None:
        kill()
        return
    # Before shutdown, which forgets them: an orphaned worker would hold the parent's pipes open.
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        # SIGKILL: a worker forked a moment ago may still have the parent's handlers (or be stuck
        # on a lock another thread held at the fork); it holds nothing that needs cleaning up,
        # and one left alive would keep the parent's stdout and stderr open after it exits.
        process.kill()
    for process in processes:
        process.join(5)


def reserve(path: Path, shape: tuple[int, ...], fail: Callable[[str], Exception]) -> int:
    """Write the .npy header and reserve the whole pixel array on disk before any decoding: a disk
    too small fails now (`fail(reason)` is raised), not half-way through. Returns the data offset."""
    need = int(np.prod(shape))
    free = shutil.disk_usage(path.parent).free
    what = f"no space left for the image cache: {need / 1e6:.1f} MB needed for {shape[0]} images at " \
           f"{shape[1]}x{shape[2]}"
    if need > free:
        raise fail(f"{what}, {free / 1e6:.1f} MB free")
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = f.tell()
        f.flush()
        try:
            os.posix_fallocate(f.fileno(), 0, offset + need)
        except AttributeError:  # no posix_fallocate (macOS): a full disk shows as ENOSPC on write
            f.truncate(offset + need)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise fail(what) from None
            f.truncate(offset + need)  # a file system without reservation: the same as above
    return offset


def decode_into(pixels: Path, files: list[Path], preprocessing: Preprocessing, workers: int,
                on_progress: Callable[[int], None] | None, fail: Callable[[str], Exception]) -> list[tuple[int, str]]:
    """Decode every file into the (new) .npy file `pixels`, in worker processes unless `workers`
    is 1 or the job is small; returns the (row, reason) failures, sorted."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    h, w = preprocessing.size
    offset = reserve(pixels, (len(files), h, w, 3), fail)
    names = [str(f) for f in files]
    chunk = max(1, min(64, len(files) // (workers * 8) or 1))
    jobs = [(str(pixels), offset, names[s : s + chunk], preprocessing.to_dict(), s) for s in range(0, len(files), chunk)]
    bad: list[tuple[int, str]] = []
    if workers == 1 or len(files) < 2 * chunk:
        for job in jobs:
            done, errors = decode_range(job)
            bad += errors
            if on_progress:
                on_progress(done)
        return sorted(bad)
    executor = _executor(min(workers, len(jobs)))
    try:
        with _interrupts_deferred():  # the first submit forks the workers
            futures = [executor.submit(decode_range, job) for job in jobs]
        for future in as_completed(futures):
            if stop_requested():  # an interrupt swallowed by code that catches everything
                raise KeyboardInterrupt
            done, errors = future.result()
            bad += errors
            if on_progress:
                on_progress(done)
    except BrokenProcessPool:
        _stop(executor)
        raise EdgeclsError(f"{pixels.parent}: a worker decoding images for the cache ended abruptly (killed, or "
                           "out of memory?); run again, or with fewer workers") from None
    except BaseException:
        _stop(executor)
        raise
    executor.shutdown()
    return sorted(bad)
