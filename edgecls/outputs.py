"""Output folders and files: never over an input, and one writer at a time.

`refuse_overlaps` is the one check of every output path against every input path (train, cv,
tune, ensemble, evaluate, explain, stream --save): an output may not be an input, lie inside an
input folder (a dataset would take it for a photo or a class), or be a folder that holds an input
file (a member model's folder, whose manifest and metrics it would overwrite).

`output_lock` keeps two runs out of one output folder (train, export): the second is refused
with the holder's process id and command instead of failing half-way on the other's files.
Standard library only.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Union

from .errors import EdgeclsError, OptionError

PathLike = Union[str, Path]
Paths = Union[PathLike, Iterable[PathLike], None]


def _as_list(value: Paths) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [Path(value)]
    return [Path(v) for v in value if v is not None]


def _real(path: Path) -> Path:
    """The absolute path with links resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # also a hard link or another name for the file
    except OSError:
        return _real(a) == _real(b)


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def refuse_overlaps(inputs: Mapping[str, Paths], folders: Mapping[str, PathLike | None] | None = None,
                    files: Mapping[str, PathLike | None] | None = None) -> None:
    """Raise OptionError when an output would overwrite or pollute an input.

    `inputs` maps a description ("dataset", "model", "member 2") to paths; those that do not
    exist (camera indexes, URLs) are ignored. `folders` and `files` map option names ("--out",
    "--save") to output folders and output files. Refused: an output file that is an input file
    (or a hard link to it) or lies inside an input folder; an output folder that is, or lies
    inside, an input folder; an output folder that directly holds an input file."""
    existing = [(what, p, p.is_dir()) for what, value in inputs.items() for p in _as_list(value)
                if os.path.lexists(p)]
    outputs = [(option, Path(p), True) for option, p in (folders or {}).items() if p is not None]
    outputs += [(option, Path(p), False) for option, p in (files or {}).items() if p is not None]
    for option, out, is_folder in outputs:
        real_out = _real(out)
        for what, path, is_dir in existing:
            real_in = _real(path)
            reason = None
            if is_dir and _within(real_out, real_in):
                reason = (f"is the {what} folder {path}" if real_out == real_in else
                          f"lies inside the {what} folder {path}, which would take what is written for input")
            elif not is_dir and not is_folder and (real_out == real_in or (out.exists() and _same_file(out, path))):
                reason = f"is the {what} {path}, which it would overwrite"
            elif not is_dir and is_folder and real_in.parent == real_out:
                reason = (f"holds the {what} {path}; what is written there would replace or mix with that "
                          "input and the files beside it (manifest, labels, metrics)")
            if reason:
                raise OptionError(f"{option} {out}: {reason}; choose an output outside the inputs")


# --- one writer per output folder --------------------------------------------------------------
LOCK_NAME = ".edgecls.lock"


def _holder(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        text = ""
    return text or "another process (it did not say which)"


@contextmanager
def output_lock(folder: PathLike, command: str | None = None) -> Iterator[Path]:
    """Hold `folder` for this process while the block runs (the folder is created if missing).

    The lock is an advisory lock on `folder/.edgecls.lock` (flock): the kernel releases it when its
    holder ends, even by SIGKILL, so a dead run never blocks the next. The file names its holder
    (process id, host, command, start time) for the refusal message, and is removed on release."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    command = command or " ".join(["edgecls", *sys.argv[1:]])
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(fd)
        except BlockingIOError:
            os.close(fd)
            raise EdgeclsError(f"{folder}: in use by another edgecls run ({_holder(path)}); wait for it to "
                               "finish or choose another output folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file between our open and lock: take the new one
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = f"pid {os.getpid()} on {socket.gethostname()}, `{command}`, since {started}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        yield path
    finally:
        try:
            path.unlink()  # while still locked: a waiting run re-checks the inode (above)
        except OSError:
            pass
        os.close(fd)


def _lock(fd: int) -> None:
    """Take an exclusive advisory lock without waiting; BlockingIOError when another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            raise BlockingIOError from None
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
