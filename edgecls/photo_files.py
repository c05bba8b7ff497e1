"""Names and files of labelled photos, shared by the device (collect, label) and the workstation
(pull): a class name or file name that came from a request or from another machine is checked
before it can become part of a path, and a photo is written without ever replacing a file that
is already there."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import EdgeclsError
from .files import fsync_dir

MAX_NAME = 64                       # characters of a class name (a folder name on every file system)
MAX_FILE_NAME = 128                 # characters of a photo's file name
# Separators and the characters Windows refuses in a name: a dataset pulled to any workstation
# must be a folder tree it can hold.
FORBIDDEN = set('/\\:*?"<>|')


class NameRefused(EdgeclsError):
    """A class or file name that must not become part of a path."""


def class_name(name: object, what: str = "class name", longest: int = MAX_NAME) -> str:
    """`name` if it is one safe folder name; otherwise NameRefused saying why.

    Refused: not text, empty, longer than MAX_NAME, a separator or another character in
    FORBIDDEN, `..`, NUL or any non-printable character, a leading dot (hidden, and `.`/`..`),
    leading or trailing spaces."""
    if not isinstance(name, str):
        raise NameRefused(f"the {what} must be text")
    shown = ascii(name)[:80]
    if not name:
        raise NameRefused(f"the {what} is empty")
    if len(name) > longest:
        raise NameRefused(f"the {what} {shown} is longer than {longest} characters")
    if not name.isprintable():
        raise NameRefused(f"the {what} {shown} holds a non-printable character (NUL, a control character)")
    bad = sorted(FORBIDDEN & set(name))
    if bad:
        raise NameRefused(f"the {what} {shown} holds {' '.join(bad)}: it must be one name, without "
                          f"{' '.join(sorted(FORBIDDEN))}")
    if ".." in name or name.startswith("."):
        raise NameRefused(f"the {what} {shown} starts with a dot or holds '..'")
    if name != name.strip():
        raise NameRefused(f"the {what} {shown} starts or ends with a space")
    return name


def file_name(name: object, suffixes: tuple[str, ...]) -> str:
    """A photo's file name from another machine: one safe name ending in one of `suffixes`."""
    class_name(name, "file name", MAX_FILE_NAME)
    if not name.lower().endswith(suffixes):
        raise NameRefused(f"the file name {ascii(name)[:80]} does not end in {', '.join(suffixes)}")
    return name


def relative_photo(path: object, suffixes: tuple[str, ...]) -> tuple[str, str]:
    """`class/file` from another machine as (class, file), both checked."""
    if not isinstance(path, str) or path.count("/") != 1:
        raise NameRefused(f"the photo path {ascii(path)[:80]} is not class/file")
    label, name = path.split("/")
    return class_name(label), file_name(name, suffixes)


def free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or `folder/stem-2.ext`, `-3`, ... : the first name not taken."""
    path = folder / name
    stem, suffix = os.path.splitext(name)
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path


def place_new(written: Path, folder: Path, name: str) -> Path:
    """Move a finished file (synced, in the same file system) into `folder` under `name` or the
    first free variant of it, never replacing a file: a hard link claims the name atomically (it
    fails where the name is taken), then the temporary name goes."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(written, "rb") as f:
        os.fsync(f.fileno())
    while True:
        target = free_name(folder, name)
        try:
            os.link(written, target)
        except FileExistsError:  # taken between the look and the link: try the next name
            continue
        except OSError:  # a file system without hard links: rename, checked just before
            if target.exists():
                continue
            os.rename(written, target)
            fsync_dir(folder)
            return target
        os.unlink(written)
        fsync_dir(folder)
        return target


def write_new(folder: Path, name: str, data: bytes) -> Path:
    """Write `data` as a new file in `folder` (atomically, never replacing one): its path."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.urandom(6).hex()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        return place_new(tmp, folder, name)
    finally:
        tmp.unlink(missing_ok=True)


def move_new(path: Path, folder: Path, name: str | None = None) -> Path:
    """Move a photo into `folder` (keeping its name, or the first free variant): never replacing a
    file there; across file systems it is copied, synced, then the original removed."""
    name = name or path.name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        return place_new(path, folder, name)
    except OSError as exc:
        import errno

        if exc.errno != errno.EXDEV:
            raise
    import shutil

    tmp = folder / f".{name}.{os.urandom(6).hex()}.tmp"
    try:
        shutil.copyfile(path, tmp)
        target = place_new(tmp, folder, name)
    finally:
        tmp.unlink(missing_ok=True)
    path.unlink()
    return target
