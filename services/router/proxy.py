"""The router's domain: resolve, place, forward, retry, replicate hot adapters, count.

A request is never lost to a dead worker: a call that fails because the worker or the path to it failed goes to
the next candidate (``faults.py`` decides whose fault a status is). Generation streams continue where they broke:
the tokens already sent to the caller go to the next worker as ``resume_ids`` (exact for greedy decoding; a sampled
stream continues as a fresh sample from there). A worker that sends nothing for ``stall_s`` counts as failed.
Errors that are the request's own (INVALID_ARGUMENT, NOT_FOUND, ...), and INTERNAL, go straight back to the caller
and blame no worker: one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from adapterfleet.common import auth
from adapterfleet.common.channel import CHANNEL_OPTIONS, REQUEST_ID_HEADER
from adapterfleet.common.errors import AdapterFleetError, Unavailable
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import open_aio_channel
from adapterfleet.router import faults
from adapterfleet.router.config import RouterConfig
from adapterfleet.router.fallback import Fallback, HandOff
from adapterfleet.router.faults import Fault, Verdict, verdict_of
from adapterfleet.router.membership import Membership
from adapterfleet.router.placement import Placement, WorkerView
from adapterfleet.router.resolver import Resolver
from adapterfleet.router.version_stats import Probe, VersionStats
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("adapterfleet.router")
# A worker back from an outage must be reachable when its breaker probes it: cap gRPC's reconnect backoff (120 s by
# default) near the breaker's own cadence, so a failed probe is the worker's answer, not the channel's backoff.
WORKER_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 500),
                          ("grpc.max_reconnect_backoff_ms", 5000)]


@dataclass
class AdapterCounters:
    hits: int = 0
    misses: int = 0
    replications: int = 0


class RouterCore:
    def __init__(self, cfg: RouterConfig, membership: Membership, resolver: Resolver, placement: Placement,
                 clock=time.monotonic, fallback: Fallback | None = None):
        self.cfg = cfg
        self.fallback = fallback  # other regions' routers, for what no worker here can take (fallback.py)
        self.membership = membership
        self.resolver = resolver
        self.placement = placement
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._loading: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()  # replication loads in flight (held so they are not collected)
        self.adapters: dict[str, AdapterCounters] = defaultdict(AdapterCounters)
        self.requests = self.retries = self.failures = 0
        self.retry_reasons: Counter[str] = Counter()               # attempts retried elsewhere, by reason
        self.failure_reasons: Counter[tuple[str, str]] = Counter()  # failed requests by (fault, reason)
        self.internal: Counter[str] = Counter()                     # INTERNAL answers per worker address
        self.versions = VersionStats()  # per-version counts for rollout gates and /metrics (version_stats.py)

    # --- plumbing ---------------------------------------------------------------------------------------------------
    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_aio_channel(address, self.cfg.security, WORKER_CHANNEL_OPTIONS)
        return worker_pb2_grpc.WorkerStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        if self.fallback is not None:
            await self.fallback.close()

    async def _pick(self, key: str, tried: set[str],
                    last: tuple[Verdict, AdapterFleetError] | None = None, sent: list[int] | None = None) -> WorkerView:
        """The next worker for ``key``; the first pick of a request also counts it (heat, hits) once. When nobody
        is left to try, the previous attempt's failure (``last``) is the answer."""
        views = self.membership.views()
        candidates = self.placement.choose(key, views, region=self.cfg.region, exclude=tried)
        if not candidates:  # maybe workers joined since the last poll: look once more before giving up
            with contextlib.suppress(Exception):  # the registry is down: the view we have is all there is
                await self.membership.refresh()
            views = self.membership.views()
            candidates = self.placement.choose(key, views, region=self.cfg.region, exclude=tried)
        if not candidates and self.fallback is not None and self.fallback.may_hand_off():
            raise HandOff(key, sent or [], last[1] if last else Unavailable(
                f"no healthy worker of region {self.cfg.region} can take this request"))
        if not candidates and last is not None:
            self._count_failure(last[0].fault.value, last[0].reason)
            raise last[1]
        if not candidates:
            self._count_failure("no_worker", "unavailable")
            raise Unavailable(f"no healthy worker can take this request; the fleet has {len(views)} registered "
                              "workers: check that workers run and announce to the store")
        worker = candidates[0]
        if key and not tried:
            self.count_pick(key, worker, views)
        if key and key not in worker.resident:
            self.membership.expect(worker.id, key)  # it is about to load there: keep routing it there
        return worker

    def count_pick(self, key: str, worker: WorkerView, views: list[WorkerView], n: int = 1) -> None:
        """``n`` requests for ``key`` go to ``worker`` first (here, or by a direct caller's route): affinity
        hits/misses, heat, and hot-adapter copies."""
        counters = self.adapters[key]
        if key in worker.resident:
            counters.hits += n
        else:
            counters.misses += n
        self._replicate(key, views, n)

    def _replicate(self, key: str, views: list[WorkerView], n: int = 1) -> None:
        now = self._clock()
        self.placement.record(key, now, n)
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
            self.membership.outcome(worker.id, None)
        except grpc.aio.AioRpcError as err:
            self.membership.outcome(worker.id, verdict_of(err, own_deadline=True).fault)
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

    def _attempt_timeout(self, deadline: float | None) -> tuple[float | None, bool]:
        """The limit of one unary attempt, and whether it is the router's own (``stall_s``), not the caller's."""
        remaining, stall = self._timeout(deadline), self.cfg.stall_s
        if stall is not None and (remaining is None or stall < remaining):
            return stall, True
        return remaining, False

    def _failed(self, worker: WorkerView, verdict: Verdict, error: AdapterFleetError, attempt: int) -> None:
        """Record a failed attempt; return to try the next worker, or raise ``error`` to the caller (always at the
        last attempt; and ``_pick`` raises it when no other worker is left)."""
        self.membership.outcome(worker.id, verdict.fault)
        if verdict.fault is Fault.INTERNAL:
            self.internal[worker.address] += 1
            error.message = f"{error.message} (worker {worker.address})"
        last_try = attempt + 1 >= self.cfg.max_attempts and not (self.fallback and self.fallback.may_hand_off())
        if not verdict.fault.retry or last_try:
            self._count_failure(verdict.fault.value, verdict.reason)
            raise error
        self.retries += 1
        self.retry_reasons[verdict.reason] += 1
        log.info("worker %s failed (%s); retrying elsewhere", worker.address, verdict.reason)

    def _count_failure(self, fault: str, reason: str) -> None:
        self.failures += 1
        self.failure_reasons[fault, reason] += 1

    # --- the API ----------------------------------------------------------------------------------------------------
    async def generate(self, request: worker_pb2.GenerateRequest, *, deadline: float | None,
                       request_id: str = "") -> AsyncIterator[worker_pb2.GenerateResponse]:
        probe = self.versions.probe()  # counted per version: time to the first message, how it ended
        try:
            async for msg in self._generate_anywhere(request, deadline=deadline, request_id=request_id, probe=probe):
                probe.first()
                yield msg
        except AdapterFleetError as err:
            probe.failed(err)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            probe.cancelled()
            raise
        probe.ok()

    async def _generate_anywhere(self, request: worker_pb2.GenerateRequest, *, deadline: float | None,
                                 request_id: str, probe: Probe) -> AsyncIterator[worker_pb2.GenerateResponse]:
        """Here, or (HandOff: no worker here can finish it) at a fallback region's router."""
        if self.fallback is not None:
            self.fallback.count_received()
        request_id = request_id or uuid.uuid4().hex  # the same id here and in the other region
        started = False
        try:
            async for msg in self._generate(request, deadline=deadline, request_id=request_id, probe=probe):
                started = True
                yield msg
        except HandOff as hand:
            assert self.fallback is not None
            async for msg in self.fallback.generate(request, hand, deadline=deadline, request_id=request_id):
                yield msg
        except Unavailable as err:  # before any worker: this region's store cannot resolve the adapter now
            if started or self.fallback is None or not self.fallback.may_hand_off():
                raise
            async for msg in self.fallback.generate(request, HandOff("", [], err), deadline=deadline,
                                                    request_id=request_id):
                yield msg

    async def _generate(self, request: worker_pb2.GenerateRequest, *, deadline: float | None, request_id: str,
                        probe: Probe) -> AsyncIterator[worker_pb2.GenerateResponse]:
        self.requests += 1
        # the caller's own token goes on to the worker, which checks it again (defence in depth)
        metadata = ((REQUEST_ID_HEADER, request_id or uuid.uuid4().hex), *auth.forward_metadata())
        key = probe.key = await self.resolver.key(request.adapter, request.routing_key)
        sent: list[int] = []
        tried: set[str] = set()
        last: tuple[Verdict, AdapterFleetError] | None = None
        for attempt in range(self.cfg.max_attempts):
            worker = await self._pick(key, tried, last, sent)
            tried.add(worker.id)
            forward = worker_pb2.GenerateRequest()
            forward.CopyFrom(request)
            forward.adapter = key
            forward.resume_ids.extend(sent)
            self.membership.begin(worker.id)
            call = self._stub(worker.address).Generate(forward, timeout=self._timeout(deadline), metadata=metadata)
            messages = call.__aiter__()
            verdict: Verdict
            error: AdapterFleetError
            try:
                while True:
                    async with asyncio.timeout(self.cfg.stall_s):  # time waiting on the worker, not on our caller
                        msg = await anext(messages, None)
                    if msg is None:
                        verdict, error = faults.ended_early(), Unavailable(
                            f"worker {worker.address} ended the stream before it finished")
                        break
                    sent += msg.token_ids
                    yield msg
                    if msg.finished:
                        self.membership.outcome(worker.id, None)
                        await self._settle(call)
                        return
            except grpc.aio.AioRpcError as err:
                verdict, error = verdict_of(err, own_deadline=False), error_from_rpc(err)
            except TimeoutError:
                verdict, error = faults.stalled(), Unavailable(
                    f"worker {worker.address} sent nothing for {self.cfg.stall_s:g}s")
            finally:
                call.cancel()
                self.membership.end(worker.id)
            self._failed(worker, verdict, error, attempt)
            last = verdict, error
        if last is not None and self.fallback is not None and self.fallback.may_hand_off():
            raise HandOff(key, sent, last[1])
        raise Unavailable(f"no worker finished the request after {self.cfg.max_attempts} attempts")

    async def score(self, request: worker_pb2.ScoreRequest, *, deadline: float | None,
                    request_id: str = "") -> worker_pb2.ScoreResponse:
        probe = self.versions.probe()  # counted per version: time to the answer, how it ended
        try:
            result = await self._score_anywhere(request, deadline=deadline, request_id=request_id, probe=probe)
        except AdapterFleetError as err:
            probe.failed(err)
            raise
        except asyncio.CancelledError:
            probe.cancelled()
            raise
        probe.ok()
        return result

    async def _score_anywhere(self, request: worker_pb2.ScoreRequest, *, deadline: float | None, request_id: str,
                              probe: Probe) -> worker_pb2.ScoreResponse:
        """Here, or (HandOff: no worker here can answer it) at a fallback region's router."""
        if self.fallback is not None:
            self.fallback.count_received()
        request_id = request_id or uuid.uuid4().hex  # the same id here and in the other region
        try:
            return await self._score(request, deadline=deadline, request_id=request_id, probe=probe)
        except HandOff as hand:
            assert self.fallback is not None
            return await self.fallback.score(request, hand, deadline=deadline, request_id=request_id)
        except Unavailable as err:  # this region's store cannot resolve the adapter now (workers fail as HandOff)
            if self.fallback is None or not self.fallback.may_hand_off():
                raise
            return await self.fallback.score(request, HandOff("", [], err), deadline=deadline, request_id=request_id)

    async def _score(self, request: worker_pb2.ScoreRequest, *, deadline: float | None, request_id: str,
                     probe: Probe) -> worker_pb2.ScoreResponse:
        self.requests += 1
        # the caller's own token goes on to the worker, which checks it again (defence in depth)
        metadata = ((REQUEST_ID_HEADER, request_id or uuid.uuid4().hex), *auth.forward_metadata())
        key = probe.key = await self.resolver.key(request.adapter, request.routing_key)
        forward = worker_pb2.ScoreRequest()
        forward.CopyFrom(request)
        forward.adapter = key
        tried: set[str] = set()
        last: tuple[Verdict, AdapterFleetError] | None = None
        for attempt in range(self.cfg.max_attempts):
            worker = await self._pick(key, tried, last)
            tried.add(worker.id)
            timeout, own = self._attempt_timeout(deadline)
            self.membership.begin(worker.id)
            verdict: Verdict
            error: AdapterFleetError
            try:
                result = await self._stub(worker.address).Score(forward, timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as err:
                verdict, error = verdict_of(err, own_deadline=own), error_from_rpc(err)
                if verdict.reason == faults.STALLED:
                    error = Unavailable(f"worker {worker.address} did not answer within {timeout:g}s")
            else:
                self.membership.outcome(worker.id, None)
                return result
            finally:
                self.membership.end(worker.id)
            self._failed(worker, verdict, error, attempt)
            last = verdict, error
        if last is not None and self.fallback is not None and self.fallback.may_hand_off():
            raise HandOff(key, [], last[1])
        raise Unavailable(f"no worker answered after {self.cfg.max_attempts} attempts")

    def affinity_hit_rate(self) -> float:
        counters = list(self.adapters.values())  # one step under the GIL: the metrics thread asks too
        hits = sum(c.hits for c in counters)
        total = hits + sum(c.misses for c in counters)
        return hits / total if total else 0.0
