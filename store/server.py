"""Assemble the store from its config (apart from running it), and run it."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable
from dataclasses import dataclass

import grpc
import redis.asyncio as aioredis

from adapterfleet.common.auth import make_authenticator, server_interceptors
from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.server import create_server, drain_when_signalled, mark_draining, mark_serving, metrics_note
from adapterfleet.store import patterns, region
from adapterfleet.store.blobs.base import BlobStore
from adapterfleet.store.blobs.cache import CachedBlobStore
from adapterfleet.store.blobs.local import LocalBlobStore
from adapterfleet.store.blobs.s3 import S3BlobStore
from adapterfleet.store.config import StoreConfig
from adapterfleet.store.metrics import ReplicationCollector, StoreCollector
from adapterfleet.store.registry import RedisRegistry
from adapterfleet.store.registry_servicer import RegistryServicer
from adapterfleet.store.revocation_follow import RevocationFollower
from adapterfleet.store.revocations import LocalRevocationSource, RevocationIndex
from adapterfleet.store.rollout_assembly import SERVICE_NAME as ROLLOUTS_NAME
from adapterfleet.store.rollout_assembly import Rollouts, make_rollouts
from adapterfleet.store.service import AdapterStoreCore
from adapterfleet.store.servicer import StoreServicer
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, store_pb2, store_pb2_grpc

log = logging.getLogger("adapterfleet.store")

STOP_STEP_S = 5.0  # each background part gets this long to stop once the server has stopped
SERVICE_NAME = store_pb2.DESCRIPTOR.services_by_name["AdapterStore"].full_name
REGISTRY_NAME = registry_pb2.DESCRIPTOR.services_by_name["Registry"].full_name


def make_blob_store(cfg: StoreConfig) -> BlobStore:
    blobs: BlobStore
    if cfg.s3 is not None:
        s3 = S3BlobStore(cfg.s3)
        s3.ensure_bucket()
        blobs = s3
    else:
        local = LocalBlobStore(f"{cfg.data_dir}/blobs")
        local.ensure()
        blobs = local
    if cfg.blob_cache_bytes > 0:
        blobs = CachedBlobStore(blobs, budget=cfg.blob_cache_bytes, max_item=cfg.blob_cache_max_item)
    return blobs


def make_redis(url: str) -> aioredis.Redis:
    # reads wait up to socket_timeout: it must exceed the 5 s XREAD BLOCK of Watch (redis-py defaults to 5 s)
    # a pooled connection idle for over a second is pinged (and reconnected) before use: after a Redis restart
    # a command then meets a live connection instead of failing once on a dead one
    return aioredis.from_url(url, socket_connect_timeout=5, socket_timeout=30, health_check_interval=1)


@dataclass
class StoreServer:
    server: grpc.aio.Server
    port: int
    core: AdapterStoreCore
    metrics: ServiceMetrics
    _health: object
    metrics_port: int = 0  # the /metrics endpoint once started (0: none)
    revocations: RevocationFollower | None = None  # with auth on: the revoked token ids, followed from Redis
    rollouts: Rollouts | None = None  # the rollout controller and its API (store/rollout_*.py)

    async def start(self) -> None:
        await self.core.index.ping()
        if self.revocations is not None:
            await self.revocations.sync()  # no revoked token gets in while the follower starts
            self.revocations.start()
        await self.server.start()
        await region.start(self.core)
        if self.rollouts is not None:
            self.rollouts.start()
        await mark_serving(self._health, [SERVICE_NAME, REGISTRY_NAME])
        self.metrics_port = self.metrics.serve()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Drain: readiness down first, then in-flight pushes and fetches get ``grace`` seconds."""
        await mark_draining(self._health, [SERVICE_NAME, REGISTRY_NAME])
        await self.server.stop(grace)
        # Background work (rollout driving, replication, blob copies) is cancelled; each part gets a bounded
        # time to finish, so that one stuck on I/O (a copy waiting on S3) cannot hold the process's exit.
        if self.rollouts is not None:
            await _bounded("the rollout controller", self.rollouts.stop())
        await _bounded("replication from the primary", region.stop(self.core))
        if self.revocations is not None:
            await _bounded("the revocation follower", self.revocations.stop())
        self.core.close()
        self.metrics.close()


async def _bounded(what: str, work: Awaitable[None], seconds: float = STOP_STEP_S) -> None:
    """Await ``work`` for at most ``seconds``; then cancel it and go on (asyncio.wait_for would wait for a
    cancellation that the work may be unable to honour while a thread it waits on is stuck)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("stopping: %s did not finish within %.0f s; left behind", what, seconds)


def create_store_server(cfg: StoreConfig, redis_client: aioredis.Redis, blobs: BlobStore) -> StoreServer:
    core, status = region.make_core(cfg, blobs, redis_client)  # a secondary region's core follows its primary
    metrics = ServiceMetrics("store", cfg.metrics)
    metrics.registry.register(StoreCollector(core))
    metrics.registry.register(ReplicationCollector(status))
    revocation_index = RevocationIndex(redis_client, cfg.redis_prefix)
    authenticator = make_authenticator(cfg.auth)
    follower = None if authenticator is None else RevocationFollower(
        LocalRevocationSource(revocation_index, core.watch), authenticator.revocations)
    servicer = StoreServicer(core, revocation_index, authenticator, status=status)
    registry = RegistryServicer(RedisRegistry(redis_client, cfg.redis_prefix),
                                max_adapters=cfg.limits.max_announced_adapters)
    rollouts = make_rollouts(cfg, redis_client, core.index)
    metrics.registry.register(rollouts.collector)
    server, port, health = create_server(
        f"{cfg.host}:{cfg.port}",
        [lambda s: store_pb2_grpc.add_AdapterStoreServicer_to_server(servicer, s),
         lambda s: registry_pb2_grpc.add_RegistryServicer_to_server(registry, s), rollouts.add_to],
        [SERVICE_NAME, REGISTRY_NAME, ROLLOUTS_NAME], metrics, max_receive_bytes=cfg.max_receive_bytes,
        tls=cfg.tls, reflection=cfg.reflection, interceptors=server_interceptors(authenticator),
    )
    return StoreServer(server, port, core, metrics, health, revocations=follower, rollouts=rollouts)


async def serve(cfg: StoreConfig, redis_client: aioredis.Redis, on_ready=None) -> None:
    """Run until SIGINT/SIGTERM, then drain in-flight calls for a few seconds."""
    sys.setswitchinterval(cfg.gil_switch_s)  # the process is the store's alone now
    blobs = await asyncio.to_thread(make_blob_store, cfg)
    if not patterns.bounded():
        log.warning("the `regex` package is missing: adapter configs' patterns are matched with re, whose cost is "
                    "unbounded; pip install 'adapterfleet[store]'")
    store = create_store_server(cfg, redis_client, blobs)
    await store.start()
    log.info("store serving on %s:%d (region %s)%s", cfg.host, store.port, cfg.region,
             metrics_note(store.metrics_port))
    if on_ready:
        on_ready(store.port)
    await drain_when_signalled(store.stop, cfg.drain_s)
    blobs.close()
    await redis_client.aclose()
