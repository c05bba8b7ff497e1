"""`edgecls train` as two processes on 127.0.0.1 (JAX, one CPU device each, gloo collectives),
proven against one process: the same model, one writer, a killed process named by the other,
and a resume across both after the kill. Real photos (flowers-small), the tiny simple_cnn at
32 px, the real command line.

Waits are bounded twice, as in tests/test_multihost.py: the timeouts under test, and a limit per
process far above them, so a regression fails instead of hanging.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecls.distributed import EXIT_STOPPED
from edgecls.distributed.launch import free_port
from edgecls.train.outputs import OUTPUTS
from tests.test_multihost import PEER_TIMEOUT, Proc, _env, _process_env

pytest.importorskip("jax", reason="CPU JAX comes with the dev extra: pip install -e '.[dev]'")

EPOCHS = 4
TRAIN = ["--backbone", "simple_cnn", "--weights", "none", "--input-size", "32", "--epochs", str(EPOCHS),
         "--fine-tune-epochs", "0", "--batch-size", "8", "--seed", "0"]
CLI = [sys.executable, "-m", "edgecls.cli"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> dict:
    """One image cache for this module's processes (the first to need it builds it)."""
    return {"KERAS_BACKEND": "jax", "EDGECLS_CACHE": str(tmp_path_factory.mktemp("cache")), "COLUMNS": "200"}


@pytest.fixture(scope="module")
def single(flowers, cache, tmp_path_factory) -> Path:
    """The reference: one process, one device, the same global batch and seed."""
    out = tmp_path_factory.mktemp("single")
    proc = Proc(out.parent, out.name, [*CLI, "train", str(flowers), "--out", str(out / "model"), *TRAIN],
                _env(**cache))
    assert proc.wait() == 0, proc.text()[-3000:]
    return out / "model"


def _history(out: Path) -> dict:
    return json.loads((out / "history.json").read_text())


def _training(out: Path) -> dict:
    return json.loads((out / "model.keras.json").read_text())["source"]["training"]


def _weights(out: Path) -> list[np.ndarray]:
    from edgecls.keras_model import load_keras_model

    return [np.asarray(w) for w in load_keras_model(out / "model.keras").weights]


def _same_model(out: Path, reference: Path) -> None:
    # Same batches, seeds and random draws (host warps, in-model flips and contrast, dropout):
    # what differs is the all-reduce's float32 summation order. Measured here: losses equal to
    # 6 digits, weights within 8e-7 (largest ~0.24). 1e-5 leaves room for other CPUs' kernels
    # (AVX2 vs AVX-512) and is far below what a broken share moves them (measured over 3 epochs:
    # each process feeding the whole batch 0.042, warping its share as if it came first 0.044).
    np.testing.assert_allclose(_history(out)["loss"], _history(reference)["loss"], rtol=1e-5)
    np.testing.assert_allclose(_history(out)["val_loss"], _history(reference)["val_loss"], rtol=1e-5)
    mine, theirs = _weights(out), _weights(reference)
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def _process(tmp_path: Path, name: str, argv: list[str], port: int, pid: int, cache: dict, **timeouts) -> Proc:
    return Proc(tmp_path, name, [*CLI, *argv], {**_process_env(port, 2, pid, **timeouts), **cache})


def test_two_processes_train_like_one_and_only_process_0_writes(flowers, single, cache, tmp_path):
    port = free_port()
    # Each process is told its own output folder: the run must write only process 0's.
    pair = [_process(tmp_path, f"p{i}", ["train", str(flowers), "--out", str(tmp_path / f"out{i}"), *TRAIN,
                                         "--data-parallel"], port, i, cache, peer_timeout=30) for i in range(2)]
    try:
        for p in pair:
            assert p.wait() == 0, p.text()[-3000:]
    finally:
        for p in pair:
            p.kill()
    assert not (tmp_path / "out1").exists()
    assert sorted(p.name for p in (tmp_path / "out0").iterdir()) == sorted(OUTPUTS)  # no checkpoint, no temporary
    training = _training(tmp_path / "out0")
    assert (training["processes"], training["devices"], training["resumed"]) == (2, 2, False)
    assert _training(single)["processes"] == 1
    _same_model(tmp_path / "out0", single)
    # Process 0 speaks for the run; process 1 says nothing on success (gloo's own C++ line aside).
    assert "model:" in pair[0].out.read_text() and "model:" not in pair[1].out.read_text()
    assert "image cache" in pair[0].err.read_text() and "image cache" not in pair[1].err.read_text()


def test_a_killed_process_is_named_and_the_run_resumes_on_both(flowers, single, cache, tmp_path):
    out, port = tmp_path / "run", free_port()
    pair = [_process(tmp_path, f"p{i}", ["train", str(flowers), "--out", str(out), *TRAIN, "--data-parallel"],
                     port, i, cache) for i in range(2)]
    try:
        state = out / "checkpoint" / "state.npz"
        deadline = time.monotonic() + 300
        while not state.exists() and pair[0].popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        # The first epoch's checkpoint just appeared: the run is in its second epoch of four.
        pair[1].popen.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        assert state.exists(), pair[0].text()[-3000:]
        assert pair[0].wait() == EXIT_STOPPED, pair[0].text()[-3000:]
    finally:
        for p in pair:
            p.kill()
    # Bound: the peer timeout plus a few watchdog intervals and a loaded machine's slack (measured
    # 3.0 s), under JAX's own heartbeat abort (2 * 3 + 5 s), whose message would not match.
    assert time.monotonic() - killed < PEER_TIMEOUT + 6
    assert "edgecls: process 0 of 2: process 1 was lost (no heartbeat for" in pair[0].err.read_text()
    # Nothing that looks finished, no half-written file: only the checkpoint of the last epoch.
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint"]
    # (data.json: the run's files, which the resume checks the dataset against)
    assert sorted(p.name for p in (out / "checkpoint").iterdir()) == ["config.json", "data.json", "state.npz"]

    launcher = Proc(tmp_path, "resume", [*CLI, "launch", "--nproc", "2", "--join-timeout", "60", "--peer-timeout",
                                         "30", "--", *CLI, "train", "--resume", str(out)], _env(**cache))
    assert launcher.wait() == 0, launcher.text()[-3000:]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUTS)  # the finished run leaves no checkpoint
    training = _training(out)
    assert (training["processes"], training["resumed"]) == (2, True)
    assert len(_history(out)["loss"]) == len(_history(single)["loss"])
    # The uninterrupted run: the single process (the first test shows two processes train like it).
    _same_model(out, single)


def test_processes_with_different_photos_refuse_and_leave_no_checkpoint(flowers, cache, tmp_path):
    """Process 1's copy of the dataset lacks a photo: both refuse before training, and process 0's
    output folder keeps nothing of the refused run (no checkpoint config or file record that a
    --resume would pick up)."""
    fewer = tmp_path / "fewer"
    for photo in sorted(flowers.rglob("*.jpg"))[1:]:
        (fewer / photo.relative_to(flowers)).parent.mkdir(parents=True, exist_ok=True)
        (fewer / photo.relative_to(flowers)).symlink_to(photo)
    port = free_port()
    pair = [_process(tmp_path, f"p{i}", ["train", str(data), "--out", str(tmp_path / f"out{i}"), *TRAIN, "--data-parallel"],
                     port, i, cache, peer_timeout=30) for i, data in enumerate((flowers, fewer))]
    try:
        codes = {p.wait() for p in pair}
    finally:
        for p in pair:
            p.kill()
    assert codes <= {2, EXIT_STOPPED} and 2 in codes, pair[0].text()[-2000:] + pair[1].text()[-2000:]
    assert "the processes disagree on the dataset" in pair[0].err.read_text() + pair[1].err.read_text()
    assert not (tmp_path / "out1").exists()
    assert not list((tmp_path / "out0").rglob("*")), sorted((tmp_path / "out0").rglob("*"))


def test_several_processes_without_data_parallel_are_refused_before_joining(flowers, tmp_path, monkeypatch):
    from edgecls.errors import OptionError
    from edgecls.train import TrainConfig, train

    for name, value in (("KERAS_DISTRIBUTION_JOB_ADDRESSES", f"127.0.0.1:{free_port()}"),
                        ("KERAS_DISTRIBUTION_NUM_PROCESSES", "2"), ("KERAS_DISTRIBUTION_PROCESS_ID", "0")):
        monkeypatch.setenv(name, value)
    started = time.monotonic()
    with pytest.raises(OptionError, match="run of 2 processes .env.; training on several processes needs data_parallel"):
        train(flowers, tmp_path / "out", TrainConfig(backbone="simple_cnn", weights="none"))
    assert time.monotonic() - started < 10 and not (tmp_path / "out").exists()  # no wait to join, nothing written
