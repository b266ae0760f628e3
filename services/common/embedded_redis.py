"""A private redis-server for the embedded default (and for tests): started on a free port, stopped with us."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from adapterfleet.common.errors import Unavailable
from adapterfleet.common.ports import reserve


def free_port() -> int:
    """A free port on 127.0.0.1, held for about a minute against other processes' connections (see
    :mod:`adapterfleet.common.ports`), so that the server started on it next can bind it."""
    return reserve()


class RedisProcess:
    """``redis-server`` on 127.0.0.1:<free port>, persisting to ``data_dir`` when given (AOF)."""

    def __init__(self, data_dir: str | Path | None = None, binary: str = "redis-server"):
        self.binary = shutil.which(binary)
        self.data_dir = Path(data_dir) if data_dir else None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        if self.binary is None:
            raise Unavailable("redis-server is not on PATH")
        self.port = free_port()
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--daemonize", "no",
                "--protected-mode", "yes", "--loglevel", "warning"]
        if self.data_dir:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            args += ["--dir", str(self.data_dir.resolve()), "--appendonly", "yes"]
        else:
            args += ["--appendonly", "no"]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = self._proc.stderr
        assert stderr is not None  # stderr=PIPE
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise Unavailable(f"redis-server exited: {stderr.read().decode(errors='replace')}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise Unavailable(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
