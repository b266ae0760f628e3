"""Two regions in one test: region A's primary store and region B's secondary store, each with its own
redis-server process and its own bucket in the moto S3 server, real gRPC servers (fixed free ports, so a store
can be restarted where its clients look for it)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable

import pytest

from adapterfleet.common.embedded_redis import RedisProcess, free_port
from adapterfleet.store.client import StoreClient
from adapterfleet.store.config import Limits, ReplicaConfig, S3Config, StoreConfig
from tests.helpers.servers import start_store


def wait_until(cond: Callable[[], object], timeout: float = 2.0, what: str = "the condition") -> object:
    """Poll ``cond`` until it returns something truthy (exceptions count as not yet); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            got = cond()
            if got:
                return got
            last = got
        except Exception as err:  # noqa: BLE001 - not yet
            last = err
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout:g}s (last: {last!r})")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def redis_b():
    """Region B's own redis-server process."""
    proc = RedisProcess().start()
    yield proc
    proc.stop()


class StoreProc:
    """An in-process store that can be stopped and started again on the same port."""

    def __init__(self, cfg: StoreConfig):
        self.cfg = cfg
        self.address = f"127.0.0.1:{cfg.port}"
        self.core = None
        self._stop = None
        self.start()

    def start(self) -> None:
        _, self.core, self._stop = start_store(self.cfg)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def client(self, **kw) -> StoreClient:
        return StoreClient(self.address, **kw)


class Regions:
    def __init__(self, primary_cfg: StoreConfig, secondary_cfg: StoreConfig):
        self.a = StoreProc(primary_cfg)
        self.b = StoreProc(secondary_cfg)
        self.ca, self.cb = self.a.client(timeout=10), self.b.client(timeout=10)

    def close(self) -> None:
        self.ca.close()
        self.cb.close()
        self.b.stop()
        self.a.stop()


def _bucket(s3_server: str) -> S3Config:
    return S3Config(endpoint_url=s3_server, bucket=f"r-{uuid.uuid4().hex[:12]}", access_key_id="test",
                    secret_access_key="test", part_size=5 << 20)


@pytest.fixture
def region_configs(redis_server, redis_b, s3_server, tmp_path):
    """(primary, secondary) configs: region "a" and region "b", each with its own Redis and bucket."""
    prefix = f"r{uuid.uuid4().hex[:8]}:"
    common = dict(redis_prefix=prefix, chunk_size=64 << 10, blob_cache_bytes=0,
                  limits=Limits(max_file_bytes=256 << 20, max_rank=64))
    primary = StoreConfig(port=free_port(), redis_url=redis_server.url, s3=_bucket(s3_server), region="a",
                          data_dir=str(tmp_path / "a"), **common)
    secondary = StoreConfig(port=free_port(), redis_url=redis_b.url, s3=_bucket(s3_server), region="b",
                            data_dir=str(tmp_path / "b"),
                            replica=ReplicaConfig(primary=primary_addr(primary), lag_check_s=0.2,
                                                  reconnect_max_s=0.5), **common)
    return primary, secondary


def primary_addr(cfg: StoreConfig) -> str:
    return f"127.0.0.1:{cfg.port}"


@pytest.fixture
def regions(region_configs):
    r = Regions(*region_configs)
    yield r
    r.close()


@pytest.fixture
def eager_regions(region_configs):
    primary, secondary = region_configs
    assert secondary.replica is not None
    r = Regions(primary, dataclasses.replace(secondary, replica=dataclasses.replace(secondary.replica,
                                                                                    replicate="eager")))
    yield r
    r.close()
