"""Start the real parts for a benchmark: redis-server, moto's S3 server, and a store process (free ports)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from adapterfleet.common.embedded_redis import RedisProcess, free_port

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
       "PYTHONPATH": f"{REPO}:{REPO / 'protos'}"}


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def s3_and_store(bucket: str = "bench", part_mb: int = 8, store_flags: tuple[str, ...] = ("--insecure",)):
    """Yields (s3 endpoint, store address). ``store_flags``: the store's security flags (default plaintext)."""
    redis = RedisProcess().start()
    s3_port, store_port = free_port(), free_port()
    s3 = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    store = None
    try:
        _wait_port(s3_port)
        endpoint = f"http://127.0.0.1:{s3_port}"
        store = subprocess.Popen(
            [sys.executable, "-m", "adapterfleet.cli.main", "store", "serve", "--port", str(store_port),
             "--redis-url", redis.url, "--s3-endpoint", endpoint, "--bucket", bucket, "--s3-part-mb", str(part_mb),
             *store_flags, "--log-level", "WARNING"], stdout=subprocess.DEVNULL, env=ENV, cwd=REPO)
        _wait_port(store_port)
        yield endpoint, f"127.0.0.1:{store_port}"
    finally:
        for proc in (store, s3):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        redis.stop()
