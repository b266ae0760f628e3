"""The rollout part of a store process, assembled apart from running it: the controller (leases, drivers), its
domain API and gRPC servicer, and its Prometheus figures. store/server.py registers and starts it."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from adapterfleet.store.config import StoreConfig
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.registry import RedisRegistry
from adapterfleet.store.rollout_controller import RolloutController
from adapterfleet.store.rollout_metrics import RolloutCollector
from adapterfleet.store.rollout_redis import RolloutRedis
from adapterfleet.store.rollout_service import RolloutService
from adapterfleet.store.rollout_servicer import RolloutServicer
from adapterfleet.store.rollout_warm import Warmer
from adapterfleet.v1 import rollout_pb2, rollout_pb2_grpc

SERVICE_NAME = rollout_pb2.DESCRIPTOR.services_by_name["Rollouts"].full_name


@dataclass
class Rollouts:
    controller: RolloutController
    service: RolloutService
    servicer: RolloutServicer
    collector: RolloutCollector

    def add_to(self, server) -> None:
        rollout_pb2_grpc.add_RolloutsServicer_to_server(self.servicer, server)

    def start(self) -> None:
        self.controller.start()

    async def stop(self) -> None:
        await self.controller.stop()


def make_rollouts(cfg: StoreConfig, redis_client: aioredis.Redis, index: RedisIndex) -> Rollouts:
    rc = cfg.rollout
    if cfg.replica is not None:  # a secondary region's aliases follow the primary: rollouts run there
        rc = replace(rc, enabled=False)
    rr = RolloutRedis(redis_client, cfg.redis_prefix, bucket_s=rc.stats_bucket_s, keep_s=rc.stats_keep_s)
    registry = RedisRegistry(redis_client, cfg.redis_prefix)
    warmer = Warmer(registry.workers, rc, cfg.security)
    owner = f"{socket.gethostname()}:{os.getpid()}:{cfg.port or 'any'}:{uuid.uuid4().hex[:8]}"
    controller = RolloutController(rr, index, warmer, rc, owner)
    service = RolloutService(rr, index, controller, rc,
                             primary=cfg.replica.primary if cfg.replica is not None else "")
    return Rollouts(controller, service, RolloutServicer(service), RolloutCollector(controller))
