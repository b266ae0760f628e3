"""Assemble a router from its config (apart from running it), and run it."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from adapterfleet.common.auth import make_authenticator, server_interceptors
from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.server import create_server, drain_when_signalled, mark_draining, mark_serving, metrics_note
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.fallback import Fallback
from adapterfleet.router.membership import Membership
from adapterfleet.router.metrics import RouterCollector
from adapterfleet.router.placement import Placement
from adapterfleet.router.proxy import RouterCore
from adapterfleet.router.resolver import Resolver
from adapterfleet.router.servicer import RouterServicer, RouterWorkerServicer
from adapterfleet.router.trust import AttributedOnly
from adapterfleet.router.version_stats import Reporter
from adapterfleet.store.aio_client import AsyncStoreClient
from adapterfleet.store.revocation_follow import RevocationFollower
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

if TYPE_CHECKING:
    from adapterfleet.router.http.server import HttpGateway

log = logging.getLogger("adapterfleet.router")
NAMES = [worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name,
         router_pb2.DESCRIPTOR.services_by_name["Router"].full_name]


def registry_source(cfg: RouterConfig, store: AsyncStoreClient):
    """Where membership comes from: the store's Registry RPC, or its Redis directly (--redis-url)."""
    if cfg.redis_url is None:
        return lambda: store.workers()
    from adapterfleet.store.registry import RedisRegistry  # noqa: PLC0415 - redis only with --redis-url
    from adapterfleet.store.server import make_redis  # noqa: PLC0415 - likewise

    registry = RedisRegistry(make_redis(cfg.redis_url), cfg.redis_prefix)
    return registry.workers


@dataclass
class RouterServer:
    server: grpc.aio.Server
    port: int
    core: RouterCore
    store: AsyncStoreClient
    metrics: ServiceMetrics
    _health: object
    metrics_port: int = 0  # the /metrics endpoint once started (0: none)
    http: HttpGateway | None = None  # the OpenAI-compatible gateway, when cfg.http_port is set
    revocations: RevocationFollower | None = None  # with auth on: revoked token ids, followed from the store
    reporter: Reporter | None = None  # per-version figures to the store, for rollout gates

    @property
    def http_port(self) -> int | None:
        return self.http.port if self.http else None

    async def start(self) -> None:
        if self.revocations is not None:
            try:
                await asyncio.wait_for(self.revocations.sync(), 5.0)
            except Exception as err:  # noqa: BLE001 - the follower keeps trying
                log.warning("revoked tokens not known yet (%s); following the store for them", str(err)[:200])
            self.revocations.start()
        try:
            await self.core.membership.refresh()
        except Exception as err:  # noqa: BLE001 - the poller keeps trying
            log.warning("no worker registry yet: %s", err)
        self.core.membership.start()
        self.core.resolver.start()
        if self.reporter is not None:
            self.reporter.start()
        await self.server.start()
        if self.http:
            await self.http.start()
        await mark_serving(self._health, NAMES)
        self.metrics_port = self.metrics.serve()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Drain: readiness down first, then in-flight streams get ``grace`` seconds."""
        await mark_draining(self._health, NAMES)
        await asyncio.gather(self.server.stop(grace), *([self.http.stop(grace)] if self.http else []))
        self.metrics.close()
        await self.core.membership.stop()
        await self.core.resolver.stop()
        if self.reporter is not None:
            await self.reporter.stop()  # the last window goes to the store before the channel closes
        if self.revocations is not None:
            await self.revocations.stop()
        await self.core.close()
        await self.store.close()


def create_router_server(cfg: RouterConfig) -> RouterServer:
    store = AsyncStoreClient(cfg.store, security=cfg.security, region=cfg.region)
    authenticator = make_authenticator(cfg.auth)
    source = registry_source(cfg, store)
    follower = None
    if authenticator is not None:  # trusted registry: only records verified worker tokens announced
        source = AttributedOnly(source, authenticator.revocations)
        follower = RevocationFollower(store, authenticator.revocations)
    membership = Membership(source, poll_s=cfg.poll_s, breaker=cfg.breaker)
    fallback = Fallback(cfg.fallback_routers, cfg.region, cfg.security, cfg.stall_s)  # counts calls received too
    core = RouterCore(cfg, membership, Resolver(store, stale_max_s=cfg.stale_max_s), Placement(cfg.placement),
                      fallback=fallback)
    metrics = ServiceMetrics("router", cfg.metrics)
    metrics.registry.register(RouterCollector(core))
    worker_api, router_api = RouterWorkerServicer(core), RouterServicer(core)
    server, port, health = create_server(
        f"{cfg.host}:{cfg.port}",
        [lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(worker_api, s),
         lambda s: router_pb2_grpc.add_RouterServicer_to_server(router_api, s)],
        NAMES, metrics, tls=cfg.tls, reflection=cfg.reflection, interceptors=server_interceptors(authenticator))
    http = None
    if cfg.http_port is not None:
        from adapterfleet.router.http.server import HttpGateway  # noqa: PLC0415 - uvicorn only with --http-port

        http = HttpGateway(core, store, host=cfg.http_host, port=cfg.http_port, tokenizer=cfg.tokenizer,
                           authenticator=authenticator)
    router_id = f"{cfg.region}/{cfg.host}:{port}"
    reporter = Reporter(core.versions, lambda w: store.report_version_stats(cfg.region, router_id, w),
                        cfg.version_report_s)
    return RouterServer(server, port, core, store, metrics, health, http=http, revocations=follower,
                        reporter=reporter)


async def serve(cfg: RouterConfig, on_ready=None) -> None:
    router = create_router_server(cfg)
    await router.start()
    log.info("router serving on %s:%d (region %s)%s", cfg.host, router.port, cfg.region,
             metrics_note(router.metrics_port))
    if on_ready:
        on_ready(router.port, router.http_port)
    await drain_when_signalled(router.stop, cfg.drain_s)
