"""Lookaside (direct) routing for the blocking SDK: ask the router where to go, then stream to the worker itself.

``FleetClient(router, direct=True)`` asks the router's ``Route`` once per (ref, routing key) and reuses the answer
for its time-to-live; each request streams straight to the first candidate worker, so no token crosses the router.
A failure that is the worker's, not the request's (the one table, :mod:`adapterfleet.common.faults`: its transport
failed, it is draining, it refuses for now, or a stream ended early) continues on the next candidate with the
tokens already received as ``resume_ids``: the guarantee the router's proxy gives (greedy output token-identical
after a worker dies). A failed worker's route is stale: it is dropped, and the router is asked again (without the
workers that failed) when the candidates run out. What the client sent where goes back to the router in the
background (``ReportRoutes``, batched) so that its placement keeps seeing heat and load.

The pieces both clients share (the route, the cache, the report batch) are here; the asyncio client is in
``direct_aio.py``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.faults import Verdict, ended_early, verdict_of
from adapterfleet.common.security import INSECURE, ClientSecurity, open_channel
from adapterfleet.common.tiers import tier_from_pb
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

MAX_ATTEMPTS = 4         # workers tried per request, as the router's proxy does
REPORT_EVERY_S = 0.1     # outcomes go to the router at most this often (and at close)
FAILED_HOLD_S = 5.0      # a worker that failed this client is skipped (and excluded from Route) this long
MAX_TTL_S = 60.0         # a router's ttl is capped: a misconfigured one must not pin routes for hours
REFRESH_AT = 0.75        # a route used past this share of its ttl is asked for again in the background
REFRESH_TIMEOUT_S = 5.0  # such a background Route call's deadline
# A worker back from an outage must be reachable soon: cap gRPC's reconnect backoff (120 s by default).
WORKER_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 500),
                          ("grpc.max_reconnect_backoff_ms", 5000)]
Metadata = Sequence[tuple[str, str]]
_NONE: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Candidate:
    address: str
    worker_id: str
    region: str
    tier: str      # where it holds the adapter ("active", "host", "disk", "loading"); "" when it does not
    load: float


@dataclass
class Route:
    """A Route answer. ``counted``: the router counted one request on ``candidates[0]`` when it answered, so the
    first request sent on it is not reported again. ``refresh_at``: from then on, a use of it asks the router again
    in the background (once: ``refreshing``), see :meth:`due`."""

    key: str
    candidates: tuple[Candidate, ...]
    expires: float
    counted: bool = True
    refresh_at: float = float("inf")
    refreshing: bool = False

    def due(self, now: float) -> bool:
        """Whether this use of the route should ask the router for a new one in the background (True once per
        route, past ``refresh_at``). The use itself goes on with the route, which is still within its ttl, so a
        client in steady use never waits for Route: without this, every ttl (0.5 s by default) the requests that
        found it lapsed all waited for one Route call. As gRPC's route lookup service does (stale age, max age)."""
        if self.refreshing or now < self.refresh_at:
            return False
        self.refreshing = True
        return True


def route_request(ref: str, routing_key: str, exclude: Collection[str],
                  refresh: bool = False) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(adapter=ref, routing_key=routing_key, exclude=sorted(exclude), refresh=refresh)


def route_of(pb: router_pb2.RouteResponse, now: float, refresh: bool = False) -> Route:
    """The answer as cached; ``refresh``: it renews a route in use, so the router counted no request for it."""
    ttl = min(max(pb.ttl_seconds, 0.0), MAX_TTL_S)
    return Route(pb.adapter_key, tuple(Candidate(c.address, c.worker_id, c.region, tier_from_pb(c.tier), c.load)
                                       for c in pb.candidates), now + ttl, counted=not refresh,
                 refresh_at=now + REFRESH_AT * ttl)


class RouteCache:
    """(ref, routing key) -> the router's answer, until it expires or one of its workers fails; and the workers
    that failed lately (the router may not know yet: its registry keeps a dead worker for seconds). Not locked."""

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], Route] = {}
        self._failed: dict[str, float] = {}  # worker id -> skipped until

    def failed(self, worker_id: str, now: float) -> None:
        self._failed[worker_id] = now + FAILED_HOLD_S

    def avoid(self, now: float) -> frozenset[str]:
        """Workers that failed this client within FAILED_HOLD_S."""
        if not self._failed:
            return _NONE
        self._failed = {w: t for w, t in self._failed.items() if t > now}
        return frozenset(self._failed)

    def get(self, ref: str, routing_key: str, now: float) -> Route | None:
        route = self._routes.get((ref, routing_key))
        if route is not None and route.expires <= now:
            del self._routes[(ref, routing_key)]
            return None
        return route

    def put(self, ref: str, routing_key: str, route: Route) -> None:
        if len(self._routes) >= 4096:  # many distinct refs: drop the expired, else the oldest
            now = time.monotonic()
            self._routes = {k: r for k, r in self._routes.items() if r.expires > now}
            if len(self._routes) >= 4096:
                del self._routes[next(iter(self._routes))]
        self._routes[(ref, routing_key)] = route

    def drop(self, ref: str, routing_key: str, route: Route) -> None:
        """Forget ``route`` (stale: one of its workers failed); a newer answer stored meanwhile stays."""
        if self._routes.get((ref, routing_key)) is route:
            del self._routes[(ref, routing_key)]


@dataclass
class Reports:
    """Outcomes not yet sent to the router: (key, worker id) -> [requests, retries, failed, finished]. Not
    locked."""

    pending: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    last_sent: float = 0.0

    def first(self, route: Route, worker_id: str) -> None:
        """A request begins on ``worker_id`` with ``route`` (its first attempt)."""
        if route.counted and route.candidates and route.candidates[0].worker_id == worker_id:
            route.counted = False  # the router counted this one when it answered
            return
        self._add(route.key, worker_id, 0)

    def retry(self, key: str, worker_id: str) -> None:
        self._add(key, worker_id, 1)

    def failed(self, key: str, worker_id: str) -> None:
        self._add(key, worker_id, 2)

    def finished(self, key: str, worker_id: str) -> None:
        self._add(key, worker_id, 3)

    def _add(self, key: str, worker_id: str, i: int) -> None:
        counts = self.pending.get((key, worker_id))
        if counts is None:  # not setdefault: its default list would be made (and dropped) on every call
            counts = self.pending[(key, worker_id)] = [0, 0, 0, 0]
        counts[i] += 1

    def wait(self, now: float) -> float:
        """Seconds until the pending outcomes may be sent."""
        return max(0.0, self.last_sent + REPORT_EVERY_S - now)

    def take(self, now: float, force: bool = False) -> router_pb2.RouteReport | None:
        """The batch to send now (None: nothing, or too soon since the last one)."""
        if not self.pending or (not force and self.wait(now) > 0):
            return None
        pending, self.pending, self.last_sent = self.pending, {}, now
        return router_pb2.RouteReport(outcomes=[
            router_pb2.RouteOutcome(adapter_key=k, worker_id=w, requests=c[0], retries=c[1], failed=c[2],
                                    finished=c[3]) for (k, w), c in pending.items()])


def not_a_router(err: grpc.RpcError) -> grpc.RpcError:
    """Route's failure as the caller should see it: UNIMPLEMENTED means the address is not a router."""
    if err.code() != grpc.StatusCode.UNIMPLEMENTED:
        return err
    return LocalStatus(grpc.StatusCode.UNIMPLEMENTED, "direct mode asks a router where to go, and this address does "
                       "not answer Route: give a router's address (a worker's address needs no direct=True)")


def forward_generate(request: worker_pb2.GenerateRequest, key: str,
                     sent: Sequence[int]) -> worker_pb2.GenerateRequest:
    """The request a worker gets: the resolved key, and the tokens received so far to resume from. The first
    attempt of a request that already names its key goes as it is (no copy: that is most requests' path)."""
    if not sent and request.adapter == key:
        return request
    out = worker_pb2.GenerateRequest()
    out.CopyFrom(request)
    out.adapter = key
    out.resume_ids.extend(sent)
    return out


def forward_score(request: worker_pb2.ScoreRequest, key: str) -> worker_pb2.ScoreRequest:
    out = worker_pb2.ScoreRequest()
    out.CopyFrom(request)
    out.adapter = key
    return out


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.001)


def retryable(verdict: Verdict, attempt: int) -> bool:
    return verdict.fault.retry and attempt + 1 < MAX_ATTEMPTS


class DirectStream(Iterator[worker_pb2.GenerateResponse]):
    """The messages of one direct generation, across failovers; ``cancel()`` stops it."""

    def __init__(self, router: DirectRouter, request: worker_pb2.GenerateRequest, timeout: float | None,
                 metadata: Metadata):
        self._call: grpc.Call | None = None
        self._cancelled = False
        deadline = None if timeout is None else time.monotonic() + timeout
        self._messages = router._generate(self, request, deadline, tuple(metadata))  # noqa: SLF001 - its pair

    def __iter__(self) -> DirectStream:
        return self

    def __next__(self) -> worker_pb2.GenerateResponse:
        return next(self._messages)

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()


class DirectRouter:
    """Routes from the router at ``channel``, calls to workers over channels of their own (under ``security``)."""

    def __init__(self, channel: grpc.Channel, security: ClientSecurity = INSECURE):
        self._router = router_pb2_grpc.RouterStub(channel)
        self._security = security
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._cache = RouteCache()
        self._reports = Reports()
        self._lock = threading.Lock()
        self._key_locks: dict[tuple[str, str], threading.Lock] = {}
        self._sending: grpc.Future | None = None
        self._timer: threading.Timer | None = None
        self.route_calls = 0  # Route RPCs made (for tests and stats)

    # --- routes -----------------------------------------------------------------------------------------------
    def route(self, ref: str, routing_key: str, metadata: Metadata, timeout: float | None,
              exclude: Collection[str] = ()) -> Route:
        """The cached answer for (ref, routing key), or the router's (one call per key at a time)."""
        if not exclude:
            with self._lock:
                now = time.monotonic()
                route = self._cache.get(ref, routing_key, now)
                refresh = route is not None and route.due(now)
            if route is not None:
                if refresh:
                    self._refresh(ref, routing_key, metadata)
                return route
        with self._lock:
            key_lock = self._key_locks.setdefault((ref, routing_key), threading.Lock())
        with key_lock:
            with self._lock:
                if not exclude and (route := self._cache.get(ref, routing_key, time.monotonic())) is not None:
                    return route  # another thread asked while this one waited
            self.route_calls += 1
            with self._lock:  # workers that failed this client lately are left out, whatever the router knows
                exclude = set(exclude) | self._cache.avoid(time.monotonic())
            try:
                pb = self._router.Route(route_request(ref, routing_key, exclude), timeout=timeout,
                                        metadata=metadata)
            except grpc.RpcError as err:
                raise not_a_router(err) from None
            route = route_of(pb, time.monotonic())
            with self._lock:
                self._cache.put(ref, routing_key, route)
                if len(self._key_locks) > 4096:
                    self._key_locks = {k: v for k, v in self._key_locks.items() if v.locked()}
            return route

    def _refresh(self, ref: str, routing_key: str, metadata: Metadata) -> None:
        """Ask for (ref, routing key)'s route again without waiting: the answer replaces the cached one when it
        comes; a failure leaves that one to lapse (the first request after it asks, and sees the error)."""
        with self._lock:
            self.route_calls += 1
            exclude = self._cache.avoid(time.monotonic())
        future = self._router.Route.future(route_request(ref, routing_key, exclude, refresh=True),
                                           timeout=REFRESH_TIMEOUT_S, metadata=metadata)

        def done(f: grpc.Future) -> None:
            if not f.cancelled() and f.exception() is None:
                with self._lock:
                    self._cache.put(ref, routing_key, route_of(f.result(), time.monotonic(), refresh=True))

        future.add_done_callback(done)

    def _next(self, ref: str, routing_key: str, route: Route, tried: set[str], metadata: Metadata,
              deadline: float | None, last: grpc.RpcError | None) -> tuple[Route, Candidate]:
        """The next candidate not tried yet (nor failed lately); when the route has none left, a fresh route
        without them."""
        with self._lock:
            avoid = tried | self._cache.avoid(time.monotonic())
        for c in route.candidates:
            if c.worker_id not in avoid:
                return route, c
        try:
            route = self.route(ref, routing_key, metadata, remaining(deadline), exclude=avoid)
        except grpc.RpcError:
            back = next((c for c in route.candidates if c.worker_id not in tried), None)
            if back is not None:  # only workers that failed lately are left: one may be back
                return route, back
            if last is not None:
                raise last from None  # nobody else to try: the last worker's failure is the answer
            raise
        for c in route.candidates:
            if c.worker_id not in tried:
                return route, c
        raise last if last is not None else RuntimeError("the router answered a route without candidates")

    def _stale(self, ref: str, routing_key: str, route: Route, key: str, worker_id: str) -> None:
        with self._lock:
            self._cache.drop(ref, routing_key, route)
            self._cache.failed(worker_id, time.monotonic())
            self._reports.failed(key, worker_id)

    def _worker(self, address: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(address)
        if stub is None:
            with self._lock:
                stub = self._stubs.get(address)
                if stub is None:
                    channel = self._channels[address] = open_channel(address, self._security,
                                                                     WORKER_CHANNEL_OPTIONS)
                    stub = self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
        return stub

    # --- calls ------------------------------------------------------------------------------------------------
    def generate(self, request: worker_pb2.GenerateRequest, *, timeout: float | None,
                 metadata: Metadata) -> DirectStream:
        return DirectStream(self, request, timeout, metadata)

    def _generate(self, holder: DirectStream, request: worker_pb2.GenerateRequest, deadline: float | None,
                  metadata: Metadata) -> Iterator[worker_pb2.GenerateResponse]:
        ref, routing_key = request.adapter, request.routing_key
        route = self.route(ref, routing_key, metadata, remaining(deadline))
        sent: list[int] = []
        tried: set[str] = set()
        last: grpc.RpcError | None = None
        for attempt in range(MAX_ATTEMPTS):
            route, worker = self._next(ref, routing_key, route, tried, metadata, deadline, last)
            tried.add(worker.worker_id)
            self._begun(route, worker.worker_id, attempt)
            call = self._worker(worker.address).Generate(forward_generate(request, route.key, sent),
                                                         timeout=remaining(deadline), metadata=metadata)
            holder._call = call  # noqa: SLF001 - its pair
            if holder._cancelled:  # noqa: SLF001
                call.cancel()
            try:
                for msg in call:
                    sent += msg.token_ids
                    if msg.finished:
                        self._ended(route.key, worker.worker_id)
                    yield msg
                    if msg.finished:
                        with contextlib.suppress(grpc.RpcError):  # let it end OK: dropped, it counts as CANCELLED
                            for _ in call:
                                pass
                        return
                verdict = ended_early()
                error: grpc.RpcError = ended_early_status(worker.address)
            except grpc.RpcError as err:
                if holder._cancelled:  # noqa: SLF001 - the caller stopped it: not the worker's failure
                    self._ended(route.key, worker.worker_id)
                    raise
                verdict, error = verdict_of(err), err
            except GeneratorExit:  # the caller dropped the stream
                call.cancel()
                self._ended(route.key, worker.worker_id)
                raise
            if not retryable(verdict, attempt):
                self._ended(route.key, worker.worker_id)
                raise error
            self._stale(ref, routing_key, route, route.key, worker.worker_id)
            last = error
        raise last if last is not None else RuntimeError("unreachable")

    def score(self, request: worker_pb2.ScoreRequest, *, timeout: float | None,
              metadata: Metadata) -> worker_pb2.ScoreResponse:
        deadline = None if timeout is None else time.monotonic() + timeout
        ref, routing_key = request.adapter, request.routing_key
        route = self.route(ref, routing_key, metadata, remaining(deadline))
        tried: set[str] = set()
        last: grpc.RpcError | None = None
        for attempt in range(MAX_ATTEMPTS):
            route, worker = self._next(ref, routing_key, route, tried, metadata, deadline, last)
            tried.add(worker.worker_id)
            self._begun(route, worker.worker_id, attempt)
            try:
                reply = self._worker(worker.address).Score(forward_score(request, route.key),
                                                           timeout=remaining(deadline), metadata=metadata)
            except grpc.RpcError as err:
                if not retryable(verdict_of(err), attempt):
                    self._ended(route.key, worker.worker_id)
                    raise
                self._stale(ref, routing_key, route, route.key, worker.worker_id)
                last = err
            else:
                self._ended(route.key, worker.worker_id)
                return reply
        raise last if last is not None else RuntimeError("unreachable")

    # --- reports ----------------------------------------------------------------------------------------------
    def _begun(self, route: Route, worker_id: str, attempt: int) -> None:
        with self._lock:
            if attempt == 0:
                self._reports.first(route, worker_id)
            else:
                self._reports.retry(route.key, worker_id)
        self._flush()

    def _ended(self, key: str, worker_id: str) -> None:
        with self._lock:
            self._reports.finished(key, worker_id)
        self._flush()

    def _flush(self) -> None:
        """Send what is pending if the last report is old enough, else once it is (a timer)."""
        with self._lock:
            now = time.monotonic()
            report = self._reports.take(now)
            if report is None and self._reports.pending and self._timer is None:
                self._timer = threading.Timer(self._reports.wait(now) + 0.001, self._on_timer)
                self._timer.daemon = True
                self._timer.start()
        if report is not None:
            self._send(report)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        self._flush()

    def _send(self, report: router_pb2.RouteReport) -> None:
        """Fire and forget: a lost report costs the router some accuracy, never a request."""
        future = self._router.ReportRoutes.future(report, timeout=5.0)
        future.add_done_callback(lambda f: f.exception())  # read the outcome so that nothing logs it as lost
        self._sending = future

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            report = self._reports.take(time.monotonic(), force=True)
            channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        if report is not None:
            with contextlib.suppress(grpc.RpcError):  # the router is gone: nothing to keep current
                self._router.ReportRoutes(report, timeout=1.0)
        for channel in channels:
            channel.close()


class LocalStatus(grpc.RpcError, grpc.Call):
    """A status this client makes itself, shaped like a failed call so that it meets the same error handling."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self):
        return ()

    def initial_metadata(self):
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self):
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:
        return False


class DirectWorkerStub:
    """The Generate and Score of a ``WorkerStub``, routed directly: for code written against the stub (the CLI)."""

    def __init__(self, router: DirectRouter):
        self._router = router

    def Generate(self, request: worker_pb2.GenerateRequest, timeout: float | None = None,
                 metadata: Metadata = ()) -> DirectStream:
        return self._router.generate(request, timeout=timeout, metadata=metadata)

    def Score(self, request: worker_pb2.ScoreRequest, timeout: float | None = None,
              metadata: Metadata = ()) -> worker_pb2.ScoreResponse:
        return self._router.score(request, timeout=timeout, metadata=metadata)


def ended_early_status(address: str) -> LocalStatus:
    """A worker's stream that closed OK before its last message: UNAVAILABLE, like the router's proxy says."""
    return LocalStatus(grpc.StatusCode.UNAVAILABLE, f"worker {address} ended the stream before it finished")
