"""A private redis-server a test may stop and start again on the same port (its data kept in an append-only file),
as an operator's restart would: clients keep their URL and must reconnect."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from adapterfleet.common.embedded_redis import free_port


class RestartableRedis:
    def __init__(self, data_dir: Path):
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not on PATH"
        self._args = [binary, "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                      "--dir", str(data_dir), "--protected-mode", "yes", "--loglevel", "warning"]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RestartableRedis:
        self._proc = subprocess.Popen([*self._args, "--port", str(self.port)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port}")

    def stop(self) -> None:
        """Like `systemctl stop redis`: SIGTERM, which flushes the append-only file, and wait."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None
