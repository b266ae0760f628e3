"""Real parts for every test: a redis-server and moto's S3 server on free ports (one each per session), and
real gRPC servers on port 0. Nothing here touches the machine's own Redis on 6379."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from adapterfleet.common.embedded_redis import RedisProcess, free_port
from adapterfleet.store.config import Limits, S3Config, StoreConfig
from tests.helpers.servers import start_store

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    proc = RedisProcess().start()
    assert proc.port != 6379
    yield proc
    proc.stop()


def _wait_http(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"S3 server did not listen on {port}")


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto in server mode: a real S3 wire endpoint in its own process."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    _wait_http(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def s3_config(s3_server) -> S3Config:
    """A fresh bucket per test."""
    return S3Config(endpoint_url=s3_server, bucket=f"t-{uuid.uuid4().hex[:12]}", access_key_id="test",
                    secret_access_key="test", part_size=5 << 20)


@pytest.fixture
def s3_client(s3_server):
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test")


@pytest.fixture
def redis_client(redis_server) -> redis.Redis:
    return redis.Redis.from_url(redis_server.url)


@pytest.fixture
def store_config(redis_server, s3_config, tmp_path) -> StoreConfig:
    """A store with its own Redis prefix and bucket, so tests never see each other's data. The blob cache is off
    so that tests reach S3 (tests/store/test_blob_cache.py covers the cache)."""
    return StoreConfig(port=0, redis_url=redis_server.url, redis_prefix=f"t{uuid.uuid4().hex[:8]}:",
                       s3=s3_config, data_dir=str(tmp_path / "store"), chunk_size=256 << 10, blob_cache_bytes=0,
                       limits=Limits(max_file_bytes=256 << 20, max_rank=64))


@pytest.fixture
def store(store_config):
    """A running store: yields a StoreHandle with .address, .core, .config, .client()."""
    from adapterfleet.store.client import StoreClient

    address, core, stop = start_store(store_config)

    class Handle:
        pass

    h = Handle()
    h.address, h.core, h.config = address, core, store_config
    clients = []

    def client(**kw):
        c = StoreClient(address, **kw)
        clients.append(c)
        return c

    h.client = client
    yield h
    for c in clients:
        c.close()
    stop()


@pytest.fixture(scope="session", autouse=True)
def native_kernel():
    """The worker's native LoRA kernel, built once per session where workers look for it by default
    (``WorkerConfig.native_dir``, relative to the working directory): every worker a test starts then loads it at start
    and runs the same ops from its first forward. None where this machine has no C++ compiler (workers fall back to
    torch's ops; the kernel's own tests skip); a compiler that fails to build it fails the session here."""
    from adapterfleet.worker.config import WorkerConfig
    from adapterfleet.worker.lora import native

    try:
        native.compiler()
    except native.KernelUnavailable:
        return None
    return native.build(WorkerConfig.native_dir)
