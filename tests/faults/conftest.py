"""The fault suite: whole fleets (store over real redis-server and moto S3, 2-3 workers, a router) on a bad day.

Workers run as real processes (``adapterfleet worker serve``) where a scenario kills or drains one; elsewhere
they run in-process (tests/helpers/servers.py), which starts in a fraction of the time.

Long variants carry ``@pytest.mark.slow`` and run only with ``ADAPTERFLEET_SLOW=1`` (e.g. Redis down for 30 s
instead of 3 s, 2,000 load/unload cycles instead of 150).
"""

from __future__ import annotations

import os
import uuid
import warnings
from pathlib import Path

import pytest

from adapterfleet.store.config import Limits, S3Config, StoreConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter

SLOW = os.environ.get("ADAPTERFLEET_SLOW", "") == "1"
HERE = Path(__file__).resolve().parent


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long variant of a fault scenario; runs only with ADAPTERFLEET_SLOW=1")


def pytest_collection_modifyitems(config, items):
    if SLOW:
        return
    skip = pytest.mark.skip(reason="long variant: set ADAPTERFLEET_SLOW=1 to run it")
    for item in items:
        if "slow" in item.keywords and HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(skip)


class Models:
    """A tiny Llama (256 positions, so that a stream lasts long enough to be cut) and adapters for it."""

    def __init__(self, root: Path):
        self.root = root
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.base = make_base_model("llama", root / "base", seed=0, max_position_embeddings=256)
            self.peft = [make_peft_adapter(self.base, root / f"peft{i}", seed=i, r=4,
                                           target_modules=["q_proj", "v_proj"]) for i in range(4)]
        self._synthetic: dict[tuple[int, int], Path] = {}

    def synthetic(self, i: int, r: int = 4) -> Path:
        """A distinct adapter the base accepts (q_proj only, 2 KB at rank 4, 32 KB at rank 64), written with numpy:
        cheap in any number."""
        if (i, r) not in self._synthetic:
            self._synthetic[i, r] = write_adapter(self.root / f"syn{i}-r{r}", r=r, seed=1000 + i, targets=("q_proj",))
        return self._synthetic[i, r]


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Models:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    return Models(tmp_path_factory.mktemp("fault-models"))


def fault_store_config(redis_url: str, s3_endpoint: str, data_dir: Path, **kw) -> StoreConfig:
    """A store with its own Redis prefix and bucket, blob cache off (so that every read reaches S3)."""
    s3 = S3Config(endpoint_url=s3_endpoint, bucket=f"f-{uuid.uuid4().hex[:12]}", access_key_id="test",
                  secret_access_key="test", part_size=5 << 20)
    return StoreConfig(port=0, redis_url=redis_url, redis_prefix=f"f{uuid.uuid4().hex[:8]}:", s3=s3,
                       data_dir=str(data_dir), chunk_size=256 << 10, blob_cache_bytes=0,
                       limits=Limits(max_file_bytes=256 << 20, max_rank=64), **kw)


class StoreHandle:
    """What tests.router.test_fleet.Fleet needs of a store (``.address``), and a client."""

    def __init__(self, cfg: StoreConfig):
        from adapterfleet.store.client import StoreClient

        self.config = cfg
        self.address, self.core, self._stop = start_store(cfg)
        self.client = StoreClient(self.address)

    def stop(self) -> None:
        self.client.close()
        self._stop()


@pytest.fixture(scope="module")
def module_store(redis_server, s3_server, tmp_path_factory):
    """One store for a whole module (the process fleet outlives a single test)."""
    handle = StoreHandle(fault_store_config(redis_server.url, s3_server, tmp_path_factory.mktemp("store")))
    yield handle
    handle.stop()
