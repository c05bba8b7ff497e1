"""Reliability fixes of issue 11: writes, checksums, structure checks, activation, hygiene."""
from __future__ import annotations

import os
import stat

import pytest

from edgecls.manifest import atomic_write_bytes


def test_atomic_write_fsyncs_and_never_touches_the_umask(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))

    def no_umask(*_):
        raise AssertionError("os.umask changes the mask of every thread in the process")

    monkeypatch.setattr(os, "umask", no_umask)
    target = tmp_path / "sub" / "model.bin"
    atomic_write_bytes(target, b"abc")
    assert target.read_bytes() == b"abc"
    assert len(synced) >= 1  # the data, before the rename
    assert [p.name for p in target.parent.iterdir()] == ["model.bin"]  # no temporary left behind
    mask = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("Umask:")), 8)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask  # readable by others as the umask allows


def test_atomic_write_failure_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    target.write_text("old")

    def boom(fd):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
