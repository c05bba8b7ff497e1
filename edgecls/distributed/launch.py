"""Start N processes of one command with the multi-process environment, and stop them all when
one fails: `python -m edgecls.distributed.launch --nproc 2 -- COMMAND [ARGS...]`.

On one machine it tries a multi-process run out (one CPU device each, or one GPU each with
``--gpu-per-process``). On several hosts run it once per host with ``--nnodes``, ``--node-rank``
and ``--coordinator`` (torchrun's options): each host then supervises its own processes. Under
SLURM use ``srun --kill-on-bad-exit=1`` instead, which plays the same part.

Exit status: 0 when every process succeeded, else the first failure's status (128 + the signal
number for a process killed by a signal, as a shell reports it).
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

from ..signals import install  # the forwarding handlers stay out of forked children
from .ports import port_problem
from .settings import ADDRESSES, JOIN_TIMEOUT, NUM_PROCESSES, PEER_TIMEOUT, PROCESS_ID

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    """A port nothing listens on now (another program could take it before the coordinator does)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(base: dict, coordinator: str, count: int, process_id: int, local_index: int,
              gpu_per_process: bool, join_timeout: float | None, peer_timeout: float | None) -> dict:
    """The environment of process `process_id` (the variables `edgecls.distributed` reads)."""
    env = dict(base)
    env.update({ADDRESSES: coordinator, NUM_PROCESSES: str(count), PROCESS_ID: str(process_id)})
    if gpu_per_process:
        # The universal way (any JAX version): the process sees one GPU, the local_index-th of
        # those this machine lets it see.
        visible = [d for d in base.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
        env["CUDA_VISIBLE_DEVICES"] = visible[local_index] if visible else str(local_index)
    if join_timeout is not None:
        env[JOIN_TIMEOUT] = f"{join_timeout:g}"
    if peer_timeout is not None:
        env[PEER_TIMEOUT] = f"{peer_timeout:g}"
    return env


def _status_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _parent_death_signal() -> Callable[[], None] | None:
    """What each process runs between fork and exec on Linux: ask the kernel to stop it when the
    launcher dies, however it dies (SIGKILL, the OOM killer), so no process of the run is left
    behind (each has its own process group, which a terminal's SIGHUP does not reach). The signal
    is SIGTERM, which edgecls's commands answer by cleaning up and stopping; SIGKILL where SIGTERM
    is ignored (inherited from whoever started the launcher). None elsewhere (no prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here: only the call runs in the child
    except (OSError, AttributeError):
        return None
    sent = signal.SIGKILL if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN else signal.SIGTERM
    launcher = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(sent), 0, 0, 0)
        if os.getppid() != launcher:  # the launcher died before the request took effect
            os._exit(128 + int(sent))

    return in_child


def _start(commands: list[tuple[int, list[str], dict]]) -> dict[int, subprocess.Popen]:
    procs: dict[int, subprocess.Popen] = {}
    preexec = _parent_death_signal()
    try:
        for pid, argv, env in commands:
            # Its own process group: a Ctrl-C reaches each process once, forwarded from here.
            procs[pid] = subprocess.Popen(argv, env=env, process_group=0, preexec_fn=preexec)
    except OSError:
        for p in procs.values():
            p.kill()
            p.wait()
        raise
    return procs


def supervise(commands: list[tuple[int, list[str], dict]], grace: float = 5.0, say=None) -> int:
    """Run the commands (process id, argv, env) until all end; when one fails, stop the others
    (SIGTERM, then SIGKILL after `grace` s). SIGINT and SIGTERM are passed on; SIGHUP (the
    terminal or SSH session closed) stops the processes with SIGTERM. Returns the exit status
    described in the module."""
    say = say or (lambda text: print(f"edgecls launch: {text}", file=sys.stderr, flush=True))
    procs = _start(commands)
    first_failure: int | None = None
    received: int | None = None
    stopping_since: float | None = None

    def forward(signum, _frame):
        nonlocal received, stopping_since
        if received is None:
            say(f"received {signal.Signals(signum).name}; passing it on to the {len(procs)} processes"
                if signum != signal.SIGHUP else f"received SIGHUP; stopping the {len(procs)} processes (SIGTERM)")
            received = signum
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)
        stopping_since = stopping_since or time.monotonic()

    # A signal that starts ignored stays so (install returns None): under nohup SIGHUP stops nothing.
    previous = {s: h for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP) if (h := install(s, forward)) is not None}
    try:
        running = dict(procs)
        while running:
            time.sleep(0.05)
            for pid, p in list(running.items()):
                code = p.poll()
                if code is None:
                    continue
                del running[pid]
                if code != 0 and first_failure is None and received is None:
                    first_failure = code
                    if running:
                        say(f"process {pid} {_status_text(code)}; stopping the other {len(running)}")
                        for other in running.values():
                            other.terminate()
                        stopping_since = time.monotonic()
            if running and stopping_since is not None and time.monotonic() - stopping_since > grace:
                for p in running.values():
                    p.kill()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    if received is not None:
        return 128 + received
    if first_failure is None:
        return 0
    return 128 - first_failure if first_failure < 0 else first_failure


def main(argv: list[str] | None = None, prog: str = "python -m edgecls.distributed.launch") -> int:
    """The command line: parse, start the processes, return the run's exit status."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=1, help="processes to start on this machine (default 1)")
    parser.add_argument("--nnodes", type=int, default=1, help="machines in the run (default 1)")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's number, 0 to nnodes-1 (0 hosts the coordinator)")
    parser.add_argument("--coordinator", help="host:port of the coordinator on machine 0 (required with --nnodes > 1; "
                                              "default on one machine: 127.0.0.1 and a free port)")
    parser.add_argument("--gpu-per-process", action="store_true", help="give each local process one GPU (its local index)")
    parser.add_argument("--join-timeout", type=float, help=f"seconds for every process to join (sets {JOIN_TIMEOUT})")
    parser.add_argument("--peer-timeout", type=float, help=f"seconds before a silent process is lost (sets {PEER_TIMEOUT})")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    problems = [text for bad, text in (
        (not command, "give the command to run after --"),
        (args.nproc < 1, f"--nproc {args.nproc}: expected at least 1"),
        (args.nnodes < 1, f"--nnodes {args.nnodes}: expected at least 1"),
        (not 0 <= args.node_rank < args.nnodes, f"--node-rank {args.node_rank}: expected 0 to {args.nnodes - 1}"),
        (args.nnodes > 1 and not args.coordinator, "--nnodes > 1 needs --coordinator HOST:PORT (machine 0, a free port)"),
        (args.join_timeout is not None and not args.join_timeout > 0, "--join-timeout: expected seconds > 0"),
        (args.peer_timeout is not None and not args.peer_timeout > 0, "--peer-timeout: expected seconds > 0"),
        (args.gpu_per_process and 0 < len(visible) < args.nproc,
         f"--gpu-per-process: CUDA_VISIBLE_DEVICES lists {len(visible)} GPUs for {args.nproc} processes"),
    ) if bad]
    if problems:
        parser.error("; ".join(problems))
    coordinator = args.coordinator or f"127.0.0.1:{free_port()}"
    if args.coordinator and args.node_rank == 0:  # this machine hosts it: a taken port, said before any start
        problem = port_problem(args.coordinator)
        if problem:
            print(f"edgecls launch: error: --coordinator {args.coordinator}: {problem}", file=sys.stderr)
            return 2
    count = args.nnodes * args.nproc
    commands = [(pid, command, child_env(dict(os.environ), coordinator, count, pid, i, args.gpu_per_process,
                                         args.join_timeout, args.peer_timeout))
                for i in range(args.nproc) for pid in [args.node_rank * args.nproc + i]]
    try:
        return supervise(commands)
    except OSError as exc:
        print(f"edgecls launch: error: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
