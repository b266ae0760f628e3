"""Ports for servers started on this machine: a port is chosen free, or checked when given, and then *held* until
the server that will listen on it binds it.

Linux gives outgoing connections ports from its ephemeral range (``net.ipv4.ip_local_port_range``, 32768-60999
by default). A port in that range that is merely free when checked can be taken by any process's next connection
before the server binds it, so "check, then start the server" fails now and then on a busy machine. A port is held
by binding it, accepting one connection on it and closing that side first: the port then sits in TIME_WAIT for a
minute, during which the kernel gives it to no outgoing connection and no ``bind(port 0)``, while a server that
sets SO_REUSEADDR (gRPC, Python's http.server and so prometheus_client, redis-server all do) binds it at once.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"
DEFAULT_EPHEMERAL = (32768, 60999)  # Linux's default ip_local_port_range


class PortInUse(OSError):
    """Something listens on (or holds) the port: no server of ours could bind it."""

    def __init__(self, port: int, host: str):
        super().__init__(errno.EADDRINUSE, f"{host}:{port} is in use (Address already in use)")
        self.port, self.host = port, host


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (inclusive)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return DEFAULT_EPHEMERAL


def reserve(port: int = 0, host: str = LOOPBACK) -> int:
    """Check that ``port`` is free on ``host`` (0: let the kernel choose one) and hold it for about a minute, as
    the module says; returns the port. Raises PortInUse when something else has it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        # SO_REUSEADDR: TIME_WAIT sockets (a server of ours that just stopped) do not count against the port, and
        # the TIME_WAIT this leaves behind does not count against the server that binds the port next
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise PortInUse(port, host) from None
            raise
        listener.listen(1)
        bound = listener.getsockname()[1]
        with socket.create_connection((host, bound), timeout=5):
            accepted, _ = listener.accept()
            accepted.close()  # this end closes first, so the TIME_WAIT that holds the port is on `bound`
    return bound
