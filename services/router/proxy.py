"""The router's domain: resolve, place, forward, retry, replicate hot adapters, count.

A request is never lost to a dead worker: a call that fails with a retryable status goes to the next candidate.
Generation streams continue where they broke: the tokens already sent to the caller go to the next worker as
``resume_ids`` (exact for greedy decoding; a sampled stream continues as a fresh sample from there).
Errors that retrying cannot fix (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, ...) go straight back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS, REQUEST_ID_HEADER
from adapterfleet.common.errors import Unavailable
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.membership import Membership
from adapterfleet.router.placement import Placement, WorkerView
from adapterfleet.router.resolver import Resolver
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("adapterfleet.router")
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}


@dataclass
class AdapterCounters:
    hits: int = 0
    misses: int = 0
    replications: int = 0


class RouterCore:
    def __init__(self, cfg: RouterConfig, membership: Membership, resolver: Resolver, placement: Placement,
                 clock=time.monotonic):
        self.cfg = cfg
        self.membership = membership
        self.resolver = resolver
        self.placement = placement
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._loading: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()  # replication loads in flight (held so they are not collected)
        self.adapters: dict[str, AdapterCounters] = defaultdict(AdapterCounters)
        self.requests = self.retries = self.failures = 0

    # --- plumbing ---------------------------------------------------------------------------------------------------
    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return worker_pb2_grpc.WorkerStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    async def _pick(self, key: str, tried: set[str]) -> WorkerView:
        """The next worker for ``key``; the first pick of a request also counts it (heat, hits) once."""
        views = self.membership.views()
        candidates = self.placement.choose(key, views, region=self.cfg.region, exclude=tried)
        if not candidates:  # maybe workers joined since the last poll: look once more before giving up
            await self.membership.refresh()
            views = self.membership.views()
            candidates = self.placement.choose(key, views, region=self.cfg.region, exclude=tried)
        if not candidates:
            raise Unavailable(f"no healthy worker can take this request (tried {len(tried)}); the fleet has "
                              f"{len(views)} registered workers: check that workers run and announce to the store")
        worker = candidates[0]
        if key and not tried:
            counters = self.adapters[key]
            if key in worker.resident:
                counters.hits += 1
            else:
                counters.misses += 1
            self._replicate(key, views)
        if key and key not in worker.resident:
            self.membership.expect(worker.id, key)  # it is about to load there: keep routing it there
        return worker

    def _replicate(self, key: str, views: list[WorkerView]) -> None:
        now = self._clock()
        self.placement.record(key, now)
        for worker in self.placement.replicas_to_add(key, views, now, region=self.cfg.region):
            if (key, worker.id) in self._loading:
                continue
            self._loading.add((key, worker.id))
            self.membership.expect(worker.id, key)
            self.adapters[key].replications += 1
            task = asyncio.ensure_future(self._load(worker, key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _load(self, worker: WorkerView, key: str) -> None:
        try:
            await self._stub(worker.address).LoadAdapter(worker_pb2.LoadAdapterRequest(ref=key), timeout=120)
        except grpc.aio.AioRpcError as err:
            log.warning("replicating %s to %s failed: %s", key, worker.address, err.details())
        finally:
            self._loading.discard((key, worker.id))

    @staticmethod
    async def _settle(call) -> None:
        """Let a finished stream end on its own (its OK status follows the last message at once) rather than cancel
        it: a cancelled call counts as CANCELLED at the worker. The caller already has every token."""
        with contextlib.suppress(asyncio.TimeoutError, grpc.aio.AioRpcError):  # the caller's finally cancels it
            await asyncio.wait_for(call.code(), 1.0)

    def _timeout(self, deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    def _give_up(self, err: grpc.aio.AioRpcError, attempt: int, worker: WorkerView) -> bool:
        if err.code() not in RETRYABLE or attempt + 1 >= self.cfg.max_attempts:
            return True
        self.retries += 1
        self.membership.mark_failed(worker.id)
        log.info("worker %s failed (%s); retrying elsewhere", worker.address, err.code().name)
        return False

    # --- the API ----------------------------------------------------------------------------------------------------
    async def generate(self, request: worker_pb2.GenerateRequest, *, deadline: float | None,
                       request_id: str = "") -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.requests += 1
        metadata = ((REQUEST_ID_HEADER, request_id or uuid.uuid4().hex),)
        key = await self.resolver.key(request.adapter, request.routing_key)
        sent: list[int] = []
        tried: set[str] = set()
        for attempt in range(self.cfg.max_attempts):
            worker = await self._pick(key, tried)
            tried.add(worker.id)
            forward = worker_pb2.GenerateRequest()
            forward.CopyFrom(request)
            forward.adapter = key
            forward.resume_ids.extend(sent)
            self.membership.begin(worker.id)
            call = self._stub(worker.address).Generate(forward, timeout=self._timeout(deadline), metadata=metadata)
            try:
                async for msg in call:
                    sent += msg.token_ids
                    yield msg
                    if msg.finished:
                        await self._settle(call)
                        return
                raise Unavailable(f"worker {worker.address} ended the stream before it finished")
            except grpc.aio.AioRpcError as err:
                if self._give_up(err, attempt, worker):
                    self.failures += 1
                    raise error_from_rpc(err) from None
            except Unavailable:
                if attempt + 1 >= self.cfg.max_attempts:
                    raise
                self.membership.mark_failed(worker.id)
            finally:
                call.cancel()
                self.membership.end(worker.id)
        self.failures += 1
        raise Unavailable(f"no worker finished the request after {self.cfg.max_attempts} attempts")

    async def score(self, request: worker_pb2.ScoreRequest, *, deadline: float | None,
                    request_id: str = "") -> worker_pb2.ScoreResponse:
        self.requests += 1
        metadata = ((REQUEST_ID_HEADER, request_id or uuid.uuid4().hex),)
        key = await self.resolver.key(request.adapter, request.routing_key)
        forward = worker_pb2.ScoreRequest()
        forward.CopyFrom(request)
        forward.adapter = key
        tried: set[str] = set()
        for attempt in range(self.cfg.max_attempts):
            worker = await self._pick(key, tried)
            tried.add(worker.id)
            self.membership.begin(worker.id)
            try:
                return await self._stub(worker.address).Score(forward, timeout=self._timeout(deadline),
                                                               metadata=metadata)
            except grpc.aio.AioRpcError as err:
                if self._give_up(err, attempt, worker):
                    self.failures += 1
                    raise error_from_rpc(err) from None
            finally:
                self.membership.end(worker.id)
        self.failures += 1
        raise Unavailable(f"no worker answered after {self.cfg.max_attempts} attempts")

    def affinity_hit_rate(self) -> float:
        hits = sum(c.hits for c in self.adapters.values())
        total = hits + sum(c.misses for c in self.adapters.values())
        return hits / total if total else 0.0
