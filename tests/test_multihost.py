"""Several processes as one run, proven on one machine: real JAX processes on 127.0.0.1 (one CPU
device each, gloo collectives), joined by edgecls.distributed, with real kills.

Each process is tests/multihost_worker.py. Waits are bounded twice: the timeouts under test
(seconds), and a subprocess limit far above them, so a regression fails instead of hanging.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgecls.augment import Augmentation
from edgecls.distributed import EXIT_NOT_JOINED, EXIT_STOPPED, Settings, batch_count, from_env, global_batch, local_rows
from edgecls.distributed.launch import free_port
from edgecls.errors import EdgeclsError, OptionError

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).with_name("multihost_worker.py")
PEER_TIMEOUT = 3.0  # kill tests: small, so they are quick; JAX's own backstop is 2*3+5 s
LIMIT = 120         # s: no single process may run longer (a hang fails the test)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERAS_DISTRIBUTION_", "SLURM_", "EDGECLS_JOIN",
                                                                      "EDGECLS_PEER"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **extra)
    return env


def _process_env(port: int, count: int, pid: int, peer_timeout: float = PEER_TIMEOUT, join_timeout: float = 60) -> dict:
    return _env(KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}", KERAS_DISTRIBUTION_NUM_PROCESSES=str(count),
                KERAS_DISTRIBUTION_PROCESS_ID=str(pid), EDGECLS_PEER_TIMEOUT=str(peer_timeout),
                EDGECLS_JOIN_TIMEOUT=str(join_timeout))


class Proc:
    """A worker (or the launcher) with its output in files, so nothing blocks on a full pipe."""

    def __init__(self, tmp: Path, name: str, argv: list[str], env: dict, **popen):
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.popen = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=out, stderr=err, **popen)

    def text(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def wait(self, timeout: float = LIMIT) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            raise AssertionError(f"still running after {timeout} s (a hang):\n{self.text()[-3000:]}") from None

    def ready(self, count: int = 1, timeout: float = LIMIT) -> list[int]:
        """The pids of the READY lines, once `count` of them are printed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [int(p) for p in re.findall(r"READY \d+ (\d+)", self.out.read_text())]
            if len(found) >= count:
                return found
            if self.popen.poll() is not None:
                raise AssertionError(f"exited {self.popen.returncode} before joining:\n{self.text()[-3000:]}")
            time.sleep(0.1)
        self.popen.kill()
        raise AssertionError(f"not ready after {timeout} s:\n{self.text()[-3000:]}")

    def kill(self):
        if self.popen.poll() is None:
            self.popen.kill()


def _worker(tmp: Path, name: str, mode: str, env: dict, *args: str) -> Proc:
    return Proc(tmp, name, [sys.executable, str(WORKER), mode, *args], env)


@pytest.fixture
def procs():
    started: list[Proc] = []
    yield started
    for p in started:
        p.kill()


# --- settings and sharding (no processes) -----------------------------------------------------
def test_settings_come_from_keras_variables_or_slurm_and_bad_ones_are_named():
    assert not from_env({}).distributed
    s = from_env({"KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1:1234,10.0.0.2:1234",
                  "KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "1",
                  "EDGECLS_PEER_TIMEOUT": "7.5"})
    assert (s.coordinator, s.num_processes, s.process_id, s.peer_timeout, s.is_writer) == ("10.0.0.1:1234", 2, 1, 7.5, False)
    slurm = from_env({"SLURM_JOB_ID": "9", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "4",
                      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"})
    assert (slurm.source, slurm.num_processes, slurm.coordinator, slurm.is_writer) == ("slurm", 4, None, True)
    bad = [({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_JOB_ADDRESSES": "h:1"}, "KERAS_DISTRIBUTION_PROCESS_ID"),
           ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "2",
             "KERAS_DISTRIBUTION_JOB_ADDRESSES": "h:1"}, "expected 0 to 1"),
           ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "two"}, "KERAS_DISTRIBUTION_NUM_PROCESSES='two'"),
           ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0"}, "KERAS_DISTRIBUTION_JOB_ADDRESSES"),
           ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "2", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
             "KERAS_DISTRIBUTION_JOB_ADDRESSES": "10.0.0.1"}, "not a host:port"),
           ({"KERAS_DISTRIBUTION_NUM_PROCESSES": "3", "KERAS_DISTRIBUTION_PROCESS_ID": "0",
             "KERAS_DISTRIBUTION_JOB_ADDRESSES": "a:1,b:1"}, "2 addresses for 3 processes"),
           ({"EDGECLS_PEER_TIMEOUT": "nan"}, "EDGECLS_PEER_TIMEOUT"),
           ({"EDGECLS_JOIN_TIMEOUT": "0"}, "EDGECLS_JOIN_TIMEOUT")]
    for env, expected in bad:
        with pytest.raises(OptionError, match=re.escape(expected)):
            from_env(env)


@pytest.mark.parametrize("count,batch,processes", [(35, 8, 2), (64, 16, 4), (10, 4, 2), (7, 6, 3)])
def test_each_image_is_fed_once_per_epoch_by_exactly_one_process(count, batch, processes):
    order = np.random.default_rng([0, 3]).permutation(count)
    fed = []
    for i in range(batch_count(count, batch, processes)):
        rows = global_batch(order, i, batch, processes)
        shares = [local_rows(rows, p, processes) for p in range(processes)]
        assert np.array_equal(np.concatenate([s for s, _ in shares]), rows)  # the global batch, in process order
        assert len({len(s) for s, _ in shares}) == 1  # equal shares: unequal ones train silently wrong
        assert [offset for _, offset in shares] == [p * len(rows) // processes for p in range(processes)]
        fed += [r for s, _ in shares for r in s]
    assert len(fed) == len(set(fed))  # no image twice in an epoch
    assert count - len(fed) < processes or count % batch  # only a tail too small to split is left out
    with pytest.raises(OptionError, match="does not split evenly over 3 processes"):
        local_rows(np.arange(8), 0, 3)


def test_rows_gathered_from_every_process_come_back_in_the_global_order():
    from edgecls.distributed.sharding import in_global_order

    order = np.random.default_rng(2).permutation(35)
    batches = [global_batch(order, i, 8, 2) for i in range(batch_count(35, 8, 2))]  # 8, 8, 8, 8, 2 rows
    stacked = np.stack([np.concatenate([local_rows(b, p, 2)[0] for b in batches]) for p in range(2)])
    sizes = [len(b) // 2 for b in batches]
    assert np.array_equal(in_global_order(stacked, sizes), np.concatenate(batches))
    features = np.stack([np.stack([stacked[p], -stacked[p]], axis=1) for p in range(2)])  # rows of shape (2,)
    assert np.array_equal(in_global_order(features, sizes)[:, 0], np.concatenate(batches))


def test_a_share_of_a_batch_gets_the_warps_it_gets_in_the_whole_batch():
    pictures = np.random.default_rng(1).integers(0, 256, (8, 24, 24, 3), dtype=np.uint8)
    whole = Augmentation().warp_batch(pictures, np.random.default_rng([0, 1, 2]))
    for start in (0, 2, 4, 6):
        share = Augmentation().warp_batch(pictures[start : start + 2], np.random.default_rng([0, 1, 2]), skip=start)
        assert np.array_equal(share, whole[start : start + 2])
    assert not np.array_equal(whole, pictures)


# --- real processes -----------------------------------------------------------------------------
def test_the_feature_head_of_two_processes_is_that_of_one(tmp_path, procs):
    """The default phase 1: backbone features of each process's share of every batch (as is and mirrored),
    gathered into the order one process computes them in, and process 0's regression everywhere."""
    procs.append(_worker(tmp_path, "single", "head", _env(), str(tmp_path / "single")))
    launcher = Proc(tmp_path, "launch", [sys.executable, "-m", "edgecls.distributed.launch", "--nproc", "2",
                                         "--join-timeout", "60", "--peer-timeout", "30", "--",
                                         sys.executable, str(WORKER), "head", str(tmp_path / "multi")], _env())
    procs.append(launcher)
    assert launcher.wait() == 0, launcher.text()[-3000:]
    assert procs[0].wait() == 0, procs[0].text()[-3000:]
    digests = re.findall(r"DIGEST (\w{64})", launcher.out.read_text())
    assert len(digests) == 2 and digests[0] == digests[1]  # one head in every process
    histories = re.findall(r"HISTORY (\{[^}]*\})", launcher.out.read_text())
    single_history = re.findall(r"HISTORY (\{[^}]*\})", procs[0].out.read_text())
    assert len(histories) == 2 and histories[0] == histories[1] == single_history[0], (histories, single_history)
    single, multi = np.load(tmp_path / "single" / "head.npz"), np.load(tmp_path / "multi" / "head.npz")
    # Measured identical to the bit (the same features in the same order). Fitting on the
    # process's own share only (no gather) moved them 0.19; gathering in process order instead of
    # the batches' order moved them 3e-7 (harmless: the same rows, summed in another order).
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(multi[key], single[key], rtol=0, atol=1e-6)


def _pair(tmp_path, procs, mode: str) -> tuple[Proc, Proc]:
    port = free_port()
    pair = [_worker(tmp_path, f"p{i}", mode, _process_env(port, 2, i)) for i in range(2)]
    procs.extend(pair)
    for p in pair:
        p.ready()
    return pair[0], pair[1]


def test_a_lost_peer_stops_the_other_with_its_name_within_the_peer_timeout(tmp_path, procs):
    p0, p1 = _pair(tmp_path, procs, "collect")  # all-gathers in a loop, as training does
    time.sleep(1)
    p1.popen.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    assert p0.wait() == EXIT_STOPPED, p0.text()[-3000:]
    # Bound: the peer timeout plus a few watchdog intervals and a loaded machine's slack, and
    # well under JAX's own heartbeat abort (2 * 3 + 5 s), whose message would not match below.
    assert time.monotonic() - killed < PEER_TIMEOUT + 6
    assert "edgecls: process 0 of 2: process 1 was lost (no heartbeat for" in p0.err.read_text()


def test_a_failing_process_tells_the_others_why(tmp_path, procs):
    port = free_port()
    p0 = _worker(tmp_path, "p0", "collect", _process_env(port, 2, 0))
    p1 = _worker(tmp_path, "p1", "fail", _process_env(port, 2, 1))
    procs.extend([p0, p1])
    assert p1.wait() == 2, p1.text()[-3000:]
    assert p0.wait() == EXIT_STOPPED, p0.text()[-3000:]
    assert "process 0 of 2: stopping: process 1 failed: bad picture: broken.jpg" in p0.err.read_text()


def test_processes_with_different_data_refuse_to_train(tmp_path, procs):
    p0, p1 = _pair(tmp_path, procs, "disagree")
    codes = {p0.wait(), p1.wait()}
    # Each finds the disagreement; one may instead stop first on the other's word (EXIT_STOPPED).
    assert codes <= {2, EXIT_STOPPED} and 2 in codes, p0.text()[-2000:] + p1.text()[-2000:]
    assert "SHARED from process 0" in p1.out.read_text()  # what process 0 alone can read reaches the others
    assert re.search(r"the processes disagree on dataset: process (\d) has '\d files', process (?!\1)\d has '\d files'; "
                     "every host needs the same data", p0.err.read_text() + p1.err.read_text())


def test_a_lost_coordinator_stops_the_others(tmp_path, procs):
    p0, p1 = _pair(tmp_path, procs, "idle")
    import psutil

    listening = [c.laddr.ip for p in (p0, p1) for c in psutil.Process(p.popen.pid).net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN]
    # The coordination service and gloo serve this machine only (a loopback coordinator address).
    assert listening and set(listening) <= {"127.0.0.1", "::ffff:127.0.0.1"}, listening
    p0.popen.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    code = p1.wait()
    # Process 0 hosts JAX's coordination service: JAX itself aborts its peers the moment it is
    # gone (SIGABRT), before any Python code can speak; the log line names the leader task.
    assert code != 0 and time.monotonic() - killed < PEER_TIMEOUT + 6, p1.text()[-3000:]
    assert "coordination service" in p1.err.read_text()


def test_a_missing_peer_or_coordinator_is_named_after_the_join_timeout(tmp_path, procs):
    alone = _worker(tmp_path, "alone0", "idle", _process_env(free_port(), 2, 0, join_timeout=2))
    orphan = _worker(tmp_path, "alone1", "idle", _process_env(port := free_port(), 2, 1, join_timeout=2))
    procs.extend([alone, orphan])
    assert alone.wait() == EXIT_NOT_JOINED, alone.text()[-3000:]
    assert "process 0 of 2: gave up after 2 s (EDGECLS_JOIN_TIMEOUT): not every process joined" in alone.err.read_text()
    assert orphan.wait() == EXIT_NOT_JOINED, orphan.text()[-3000:]
    assert f"process 1 of 2: gave up after 2 s (EDGECLS_JOIN_TIMEOUT): nothing answers at 127.0.0.1:{port}" \
        in orphan.err.read_text()


def test_the_launcher_stops_every_process_when_one_dies(tmp_path, procs):
    launcher = Proc(tmp_path, "launch", [sys.executable, "-m", "edgecls.distributed.launch", "--nproc", "2",
                                         "--peer-timeout", "30", "--", sys.executable, str(WORKER), "idle"], _env())
    procs.append(launcher)
    pids = launcher.ready(2)
    ranks = {int(r): int(p) for r, p in re.findall(r"READY (\d+) (\d+)", launcher.out.read_text())}
    os.kill(ranks[1], signal.SIGKILL)
    assert launcher.wait(30) == 128 + signal.SIGKILL
    assert "edgecls launch: process 1 was killed by SIGKILL; stopping the other 1" in launcher.err.read_text()
    for pid in pids:
        with pytest.raises(ProcessLookupError):  # both gone (reaped by the launcher)
            os.kill(pid, 0)


def _gone(pid: int) -> bool:
    """Ended: no such process, or a zombie (its new parent, this container's init, may never reap it)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (the kernel's SigCgt mask)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["SIGKILL", "SIGHUP"])
def test_no_process_outlives_the_launcher(tmp_path, procs, sig):
    """The launcher killed outright, or hung up on (its terminal or SSH session closed): no
    process of the run is left running (they have process groups of their own, so only the
    launcher can stop them: a parent-death signal, and SIGHUP handled like SIGTERM)."""
    child = "echo READY $KERAS_DISTRIBUTION_PROCESS_ID $$; exec sleep 60"
    # SIGHUP at its default whatever this suite was started with (nohup would have it ignored,
    # and an ignored signal stays ignored, in the launcher as in any edgecls command).
    launcher = Proc(tmp_path, "launch", [sys.executable, "-m", "edgecls.cli", "launch", "--nproc", "2", "--",
                                         "sh", "-c", child], _env(),
                    preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    procs.append(launcher)
    pids = launcher.ready(2, timeout=60)
    deadline = time.monotonic() + 30
    while not _catches(launcher.popen.pid, signal.SIGHUP) and time.monotonic() < deadline:
        time.sleep(0.02)  # its handlers go in just after the processes start
    launcher.popen.send_signal(sig)
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [pid for pid in pids if not _gone(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"still running 10 s after the launcher got {sig.name}: {left}"
    code = launcher.wait(30)
    assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGHUP), launcher.text()
    if sig == signal.SIGHUP:
        assert "received SIGHUP; stopping the 2 processes (SIGTERM)" in launcher.err.read_text()


def test_a_coordinator_port_in_use_is_named(tmp_path):
    """The launcher checks the port before it starts anything; process 0 started without it says
    which port JAX could not listen on (JAX itself: "UNKNOWN: Failed to start RPC server")."""
    started = tmp_path / "started"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "edgecls.distributed.launch", "--nproc", "2", "--coordinator",
                               f"127.0.0.1:{port}", "--", "touch", str(started)], env=_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and f"--coordinator 127.0.0.1:{port}: port {port} is in use" in proc.stderr, \
            proc.stderr
        assert not started.exists()  # no process was started
        alone = _worker(tmp_path, "p0", "idle", _process_env(port, 2, 0, join_timeout=30))
        try:
            code = alone.wait(60)
        finally:
            alone.kill()
    assert code != 0 and (f"process 0 cannot serve the coordinator at 127.0.0.1:{port}: port {port} is in use"
                          in alone.err.read_text()), (code, alone.text()[-3000:])


def test_sigterm_stops_a_process_of_a_run(tmp_path, procs):
    p0, p1 = _pair(tmp_path, procs, "idle")
    p1.popen.terminate()
    # JAX's preemption service would catch SIGTERM and keep the process running: it is off.
    assert p1.wait(30) == -signal.SIGTERM, p1.text()[-3000:]
    assert p0.wait() == EXIT_STOPPED and "process 1 was lost" in p0.err.read_text()


def test_the_launcher_refuses_bad_options():
    for argv, expected in ((["--nproc", "0", "--", "true"], "--nproc 0"), (["--nproc", "2"], "after --"),
                           (["--nnodes", "2", "--", "true"], "--coordinator")):
        proc = subprocess.run([sys.executable, "-m", "edgecls.distributed.launch", *argv], env=_env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and expected in proc.stderr, proc.stderr


def test_the_launcher_gives_each_process_its_number_and_gpu():
    from edgecls.distributed.launch import child_env

    env = child_env({"CUDA_VISIBLE_DEVICES": "2,3", "PATH": "/bin"}, "10.0.0.1:29500", 4, 3, 1, True, 30, None)
    assert from_env(env) == Settings(4, 3, "10.0.0.1:29500", join_timeout=30, source="env")
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["PATH"] == "/bin"
    assert "CUDA_VISIBLE_DEVICES" not in child_env({}, "h:1", 2, 0, 0, False, None, None)


def test_initialize_refuses_a_second_different_setup():
    from edgecls import distributed
    from edgecls.distributed import session

    try:
        first = distributed.initialize(distributed.Settings())
        assert first.is_writer and not first.distributed and distributed.current() is first
        assert distributed.initialize(distributed.Settings()) is first
        # A single-process session holds nothing: runs in one Python process may change settings.
        assert distributed.initialize(distributed.Settings(peer_timeout=5)).settings.peer_timeout == 5
        session._current = distributed.Session(distributed.Settings(2, 0, "127.0.0.1:1"), None)  # as if joined
        with pytest.raises(EdgeclsError, match="already initialised"):
            distributed.initialize(distributed.Settings(peer_timeout=5))
    finally:
        session._current = None
