"""The coordinator's port, checked where process 0 will listen: JAX reports a port it cannot take
only as "UNKNOWN: Failed to start RPC server", without the port. Standard library only."""
from __future__ import annotations

import errno
import socket

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def split_address(address: str) -> tuple[str, int] | None:
    """HOST:PORT (also [v6]:PORT) as (host, port), or None when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def port_problem(address: str) -> str | None:
    """Why process 0 could not listen for the coordinator at `address` on this machine, or None.

    It binds where JAX's coordination service will (`edgecls.distributed.initialize`: the address
    itself when it is a loopback one, else every interface), with SO_REUSEADDR as gRPC sets it, so
    a port left in TIME_WAIT by an earlier run does not count as taken."""
    parsed = split_address(address)
    if parsed is None:
        return f"{address!r} is not HOST:PORT"
    host, port = parsed
    where = (host, port) if host in LOOPBACK else ("::", port)
    family = socket.AF_INET6 if ":" in where[0] else socket.AF_INET
    try:
        probe = socket.socket(family, socket.SOCK_STREAM)
    except OSError:  # no IPv6 on this machine: every IPv4 interface instead
        probe, where = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("0.0.0.0", port)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(where)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} is in use on this machine (another run, or another program: "
                        f"`ss -ltnp 'sport = :{port}'` names it); choose a free port for the coordinator")
            if exc.errno == errno.EACCES:
                return f"port {port} needs privileges to listen on (below 1024?); choose a port from 1024 to 65535"
            return f"cannot listen on {host} port {port} ({exc.strerror})"
    return None
