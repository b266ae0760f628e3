"""Assemble a worker from its config (apart from running it), and run it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
import torch

from adapterfleet.common.auth import make_authenticator, server_interceptors
from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.server import create_server, drain_when_signalled, mark_draining, mark_serving, metrics_note
from adapterfleet.common.signing import TrustPolicy
from adapterfleet.common.tokens import worker_id_of
from adapterfleet.store.aio_client import AsyncStoreClient
from adapterfleet.store.client import StoreClient
from adapterfleet.store.revocation_follow import RevocationFollower
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker import threads
from adapterfleet.worker.announcer import Announcer
from adapterfleet.worker.backend import WorkerBackend
from adapterfleet.worker.cache import AdapterCache
from adapterfleet.worker.config import WorkerConfig
from adapterfleet.worker.engine import Engine
from adapterfleet.worker.lora import LoraModel, native
from adapterfleet.worker.metrics import WorkerCollector, load_histogram
from adapterfleet.worker.model_host import ModelHost
from adapterfleet.worker.service import WorkerCore
from adapterfleet.worker.servicer import WorkerServicer

log = logging.getLogger("adapterfleet.worker")
SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name
RESOLVE_TIMEOUT_S = 10.0  # a store that does not answer a Resolve in this long: the request fails, typed


@dataclass
class WorkerServer:
    server: grpc.aio.Server
    port: int
    core: WorkerCore
    announcer: Announcer
    _health: object
    metrics_port: int = 0  # the /metrics endpoint once started (0: none)
    revocations: RevocationFollower | None = None  # with auth on: revoked token ids, followed from the store
    revocation_store: AsyncStoreClient | None = None

    async def start(self) -> None:
        if self.revocations is not None:  # a store that is down must not keep the worker from serving
            try:
                await asyncio.wait_for(self.revocations.sync(), 5.0)
            except Exception as err:  # noqa: BLE001 - the follower keeps trying
                log.warning("revoked tokens not known yet (%s); following the store for them", str(err)[:200])
            self.revocations.start()
        self.core.engine.start()
        await self.server.start()
        await mark_serving(self._health, [SERVICE_NAME])
        self.announcer.start()
        self.metrics_port = self.core.metrics.serve()

    async def stop(self, grace: float | None = 1.0) -> None:
        """Drain: readiness down and routers told first, then in-flight calls get ``grace`` seconds."""
        self.core.draining = True
        await mark_draining(self._health, [SERVICE_NAME])
        await self.announcer.stop()
        await self.server.stop(grace)
        if self.revocations is not None:
            await self.revocations.stop()
        if self.revocation_store is not None:
            await self.revocation_store.close()
        if (resolver := self.core.resolver) is not None:
            self.core.resolver = None  # a late resolve uses the blocking client, not a closed channel
            await resolver.close()
        self.core.engine.stop()
        self.core.metrics.close()
        self.core.close()


def build_core(cfg: WorkerConfig, host: ModelHost | None = None, metrics: ServiceMetrics | None = None) -> WorkerCore:
    host = host or ModelHost.load(cfg.base_model, cfg.device, cfg.dtype, packed_weights=cfg.packed_weights,
                                  batch_hint=cfg.max_batch)
    metrics = metrics or ServiceMetrics("worker", cfg.metrics)
    lora = LoraModel(host.model, max_slots=cfg.max_slots)
    store = StoreClient(cfg.store, security=cfg.security, direct=cfg.direct)
    backend = WorkerBackend(store, lora, fingerprint=host.fingerprint, disk_dir=cfg.disk_dir, dtype=host.dtype,
                            device=host.device, max_rank=cfg.max_rank, trust=TrustPolicy.from_specs(cfg.trust_keys))
    cache = AdapterCache(backend, max_slots=cfg.max_slots, host_bytes=cfg.host_bytes, disk_bytes=cfg.disk_bytes,
                         slot_wait_s=cfg.slot_wait_s, on_load=load_histogram(metrics).observe)
    if adopted := cache.adopt_disk():
        log.info("%d adapters on local disk from before (%s) are in the disk tier", adopted, cfg.disk_dir)
    engine = Engine(host.model, lora, pad_id=host.pad_id, device=host.device, max_batch=cfg.max_batch,
                    prefill_chunk_tokens=cfg.prefill_chunk_tokens, threads=threads.engine_threads(cfg.threads),
                    fuse=cfg.fused_steps)
    if cfg.native_kernel and host.device.type == "cpu" and host.dtype == torch.float32:
        start_native_kernel(lora, engine if cfg.decode_attention else None, cfg.native_dir)
    core = WorkerCore(cfg, host, cache, engine, store, metrics)
    metrics.registry.register(WorkerCollector(core))
    return core


def start_native_kernel(lora: LoraModel, engine: Engine | None, directory: str) -> None:
    """The native kernels (LoRA terms, decode attention): loaded now where ``directory`` has a build for these sources,
    torch and CPU (so every forward of this worker runs the same ops), else built in the background, the LoRA model
    and the engine (None: it keeps the model's own attention) taking them up from their next forward once they are
    ready. Where they cannot be had, torch's ops serve and the log says why."""
    started = time.monotonic()

    def ready(kernel: native.LowRankKernel) -> None:
        lora.use_kernel(kernel)
        if engine is not None:
            engine.use_attention(kernel.attention)
        log.info("native LoRA kernel %s in use (%.1f s after start; %s)", kernel.key, time.monotonic() - started,
                 directory)

    def failed(exc: native.KernelUnavailable) -> None:
        log.warning("native LoRA kernel unavailable, decode steps run torch's ops: %s", exc)

    try:
        kernel = native.load(directory)
    except native.KernelUnavailable as exc:
        failed(exc)
        return
    if kernel is not None:
        ready(kernel)
        return
    native.build_in_background(directory, ready, failed)


def create_worker_server(cfg: WorkerConfig, core: WorkerCore) -> WorkerServer:
    servicer = WorkerServicer(core)
    authenticator = make_authenticator(cfg.auth)
    follower = revocation_store = None
    if authenticator is not None:  # workers follow revocations from the store's event stream themselves
        revocation_store = AsyncStoreClient(cfg.store, security=cfg.security, timeout=10.0)
        follower = RevocationFollower(revocation_store, authenticator.revocations)
    server, port, health = create_server(
        f"{cfg.host}:{cfg.port}", [lambda s: worker_pb2_grpc.add_WorkerServicer_to_server(servicer, s)],
        [SERVICE_NAME], core.metrics, tls=cfg.tls, reflection=cfg.reflection,
        interceptors=server_interceptors(authenticator))
    announcer = Announcer(core, cfg.store, cfg.advertise or f"{cfg.host}:{port}", every_s=cfg.announce_every_s,
                          ttl_s=cfg.announce_ttl_s, security=cfg.security,
                          worker_id=worker_id_of(cfg.security.token) or "")  # a worker token names its worker
    # refs resolve on this loop, not through a thread hop: a Resolve then takes 1.39-1.43 ms p50 / 1.60-1.65 p90
    # against 1.53-1.55 / 2.04-2.06 in a thread (the 2-core VM, interleaved; cold loads unchanged within noise)
    core.resolver = AsyncStoreClient(cfg.store, security=cfg.security, timeout=RESOLVE_TIMEOUT_S)
    return WorkerServer(server, port, core, announcer, health, revocations=follower,
                        revocation_store=revocation_store)


async def serve(cfg: WorkerConfig, on_ready=None) -> None:
    # torch's intra-op threads only on the engine's thread (threads.py): not here, not on the executor's threads
    threads.single()
    asyncio.get_running_loop().set_default_executor(threads.side_executor())
    core = await asyncio.to_thread(build_core, cfg)
    worker = create_worker_server(cfg, core)
    await worker.start()
    log.info("worker serving %s on %s:%d (fingerprint %s)%s", cfg.base_model, cfg.host, worker.port,
             core.host.fingerprint, metrics_note(worker.metrics_port))
    if on_ready:
        on_ready(worker.port, core.host.fingerprint)
    await drain_when_signalled(worker.stop, cfg.drain_s)
