"""Assembly of a store's region role: a primary reports its stream; a secondary (``cfg.replica`` set) follows its
primary, forwards writes there and copies blobs from it. Called by server.py; nothing starts here."""

from __future__ import annotations

import random

import redis.asyncio as aioredis

from adapterfleet.store.blob_copy import BlobCopier
from adapterfleet.store.blobs.base import BlobStore
from adapterfleet.store.config import StoreConfig
from adapterfleet.store.forwarding import SecondaryStoreCore
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.primary_client import PrimaryClient
from adapterfleet.store.replica_index import ReplicaIndex
from adapterfleet.store.replication import Follower
from adapterfleet.store.service import AdapterStoreCore
from adapterfleet.store.status_source import StatusSource


def make_core(cfg: StoreConfig, blobs: BlobStore, redis_client: aioredis.Redis,
              rng: random.Random | None = None) -> tuple[AdapterStoreCore, StatusSource]:
    """The store's core (a SecondaryStoreCore in a secondary region) and what its Status RPC reports."""
    index = RedisIndex(redis_client, cfg.redis_prefix)
    replica_index = ReplicaIndex(redis_client, cfg.redis_prefix)
    if cfg.replica is None:
        return AdapterStoreCore(cfg, blobs, index, rng), StatusSource(cfg.region, replica_index)
    primary = PrimaryClient(cfg.replica.primary, cfg.security)
    copier = BlobCopier(blobs, primary, replica_index, cfg.replica.copy_concurrency)
    follower = Follower(cfg.replica, primary, replica_index, copier, index.manifest)
    core = SecondaryStoreCore(cfg, blobs, index, primary, follower, copier, rng)
    return core, StatusSource(cfg.region, replica_index, follower)


async def start(core: AdapterStoreCore) -> None:
    if isinstance(core, SecondaryStoreCore):
        core.follower.start()


async def stop(core: AdapterStoreCore) -> None:
    if isinstance(core, SecondaryStoreCore):
        await core.follower.stop()
        await core.primary.close()
