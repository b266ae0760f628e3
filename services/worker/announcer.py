"""Tells the registry (hosted by the store) every second what this worker holds and how loaded it is; sooner
(every ``load_every_s``) while its in-flight load changes, so that routers serving direct (lookaside) callers, whose
requests they never see, place on a recent load."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import grpc

from adapterfleet.common.security import INSECURE, ClientSecurity, open_aio_channel
from adapterfleet.common.tiers import LOADING
from adapterfleet.store.workers import WorkerRecord, record_to_pb
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc
from adapterfleet.worker.service import WorkerCore

log = logging.getLogger("adapterfleet.worker")


class Announcer:
    load_every_s = 0.25  # while the in-flight load changes, announce this often (else every ``every_s``)

    def __init__(self, core: WorkerCore, store_address: str, advertise: str, *, every_s: float = 1.0,
                 ttl_s: float = 3.0, worker_id: str = "", security: ClientSecurity = INSECURE):
        self._core = core
        self._store_address = store_address
        self._security = security
        self.advertise = advertise
        self.id = worker_id or uuid.uuid4().hex[:12]
        self._every = every_s
        self._ttl = ttl_s
        self._task: asyncio.Task | None = None
        self._channel: grpc.aio.Channel | None = None

    def info(self, draining: bool = False) -> registry_pb2.WorkerInfo:
        core, cache = self._core, self._core.cache
        adapters = {e.key: e.tier for e in cache.entries()}
        adapters.update((k, LOADING) for k in cache.loading() if k not in adapters)
        record = WorkerRecord(id=self.id, address=self.advertise, region=core.cfg.region, capacity=cache.max_slots,
                              load=float(core.inflight), adapters=adapters, fingerprint=core.host.fingerprint,
                              base_model=core.host.path, draining=draining)
        return record_to_pb(record, ttl_seconds=self._ttl)

    async def announce(self, draining: bool = False) -> None:
        if self._channel is None:
            self._channel = open_aio_channel(self._store_address, self._security)
        stub = registry_pb2_grpc.RegistryStub(self._channel)
        await stub.Announce(self.info(draining), timeout=2.0)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        announced_load, next_at, failing = None, 0.0, False
        while True:
            load = self._core.inflight
            if (load != announced_load and not failing) or loop.time() >= next_at:
                next_at, announced_load = loop.time() + self._every, load
                try:
                    await self.announce()
                    failing = False
                except grpc.RpcError as err:  # retried at the heartbeat's pace, not at every change of load
                    failing = True
                    log.warning("cannot announce to the registry at %s: %s %s", self._store_address, err.code(),
                                str(getattr(err, "details", lambda: "")() or "")[:300])  # e.g. the wrong token
            await asyncio.sleep(min(self.load_every_s, self._every))

    async def stop(self) -> None:
        """Announce that we are draining (routers stop sending), then go quiet."""
        if self._task:
            self._task.cancel()
        with contextlib.suppress(grpc.RpcError):  # the store may be gone already; the record then expires
            await self.announce(draining=True)
        if self._channel is not None:
            await self._channel.close()
