"""Lookaside (direct) routing for the asyncio SDK: :mod:`adapterfleet.sdk.direct`'s behaviour on grpc.aio.

One Route call per (ref, routing key) at a time (concurrent misses share it, and a route in use is asked for again
in the background before it lapses: ``Route.due``); reports go out on the running loop
(fire and forget, at most every ``REPORT_EVERY_S``), and one held back for that is sent when a thread of the
router's own (``_Alarm``) wakes the loop for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

import grpc

from adapterfleet.common.aio import listed_task
from adapterfleet.common.faults import ended_early, verdict_of
from adapterfleet.common.security import INSECURE, ClientSecurity, open_aio_channel
from adapterfleet.sdk.direct import (
    MAX_ATTEMPTS,
    REFRESH_TIMEOUT_S,
    WORKER_CHANNEL_OPTIONS,
    Candidate,
    Metadata,
    Reports,
    Route,
    RouteCache,
    ended_early_status,
    forward_generate,
    forward_score,
    not_a_router,
    remaining,
    retryable,
    route_of,
    route_request,
)
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

EOF = grpc.aio.EOF
try:  # grpc's own response stream (see ``reader``); a grpc without it is read through the public API
    from grpc.aio._call import _StreamResponseMixin as _GrpcResponseStream
except ImportError:  # pragma: no cover - every grpcio this package allows has it
    _GrpcResponseStream = None


def reader(call: grpc.aio.UnaryStreamCall) -> Callable[[], Awaitable[Any]]:
    """A function that awaits ``call``'s next message, or ``EOF`` once it ended (then ask ``raise_for_status``).

    For grpc's own calls that is their ``_read``: the coroutine that grpc's iterator awaits once per message. The
    public ``read()`` and the iterator each wrap it in one more coroutine per message, and a client at 100 concurrent
    streams pays that on its one event loop: ~1 ms of the loop's ~23 ms a window (benchmarks/RESULTS.md). So this
    wrapper, which must see each message for its failover bookkeeping, stands in for grpc's iterator instead of
    sitting on top of it. Any other call (an intercepted one, or a grpc without ``_read``) is read through
    ``read()``, which raises a failed call's error itself."""
    if _GrpcResponseStream is not None and isinstance(call, _GrpcResponseStream):
        return call._read  # noqa: SLF001 - see above; tests/sdk/test_direct_stream.py pins it
    return call.read


async def raise_for_status(call: grpc.aio.UnaryStreamCall) -> None:
    """At ``EOF``: raise the call's error if it failed (grpc's iterator does this at its end; ``read()`` did)."""
    if _GrpcResponseStream is not None and isinstance(call, _GrpcResponseStream):
        await call._raise_for_status()  # noqa: SLF001 - the check grpc's own iterator makes at EOF


FOLD_EVERY = 64  # messages a stream holds before it folds them into token ids (bounds its memory)


class AsyncDirectStream(AsyncIterator[worker_pb2.GenerateResponse]):
    """The messages of one direct generation (``async for``), across failovers; ``cancel()`` stops it.

    A plain state machine rather than an async generator, reading the worker's call as grpc's own iterator does
    (``reader``): what a client at 100 concurrent streams pays per message is what this path adds over calling
    the worker."""

    __slots__ = ("_attempt", "_call", "_cancelled", "_deadline", "_done", "_got", "_last", "_metadata", "_read",
                 "_request", "_route", "_router", "_sent", "_tried", "_worker")

    def __init__(self, router: AsyncDirectRouter, request: worker_pb2.GenerateRequest, timeout: float | None,
                 metadata: Metadata):
        self._router = router
        self._request = request
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._metadata = tuple(metadata)  # the same object when it is one
        self._call: grpc.aio.UnaryStreamCall | None = None
        self._read: Callable[[], Awaitable[Any]] | None = None
        self._route: Route | None = None
        self._worker: Candidate | None = None
        self._got: list[worker_pb2.GenerateResponse] = []  # received since the last _fold
        self._sent: list[int] = []  # the tokens of the messages before those
        self._tried: set[str] = set()
        self._attempt = -1
        self._last: grpc.RpcError | None = None
        self._cancelled = self._done = False

    def __aiter__(self) -> AsyncDirectStream:
        return self

    def _start(self, worker: Candidate) -> None:
        """Send the request (again: with the tokens received so far) to ``worker``."""
        router, route = self._router, self._route
        assert route is not None
        self._attempt += 1
        self._worker = worker
        self._tried.add(worker.worker_id)
        router._begun(route, worker.worker_id, self._attempt)  # noqa: SLF001 - its pair
        self._call = call = router._worker(worker.address).Generate(  # noqa: SLF001
            forward_generate(self._request, route.key, self._fold()), timeout=remaining(self._deadline),
            metadata=self._metadata)
        self._read = reader(call)
        if self._cancelled:
            call.cancel()

    async def _next_attempt(self) -> None:
        router, request = self._router, self._request
        ref, routing_key = request.adapter, request.routing_key
        if self._route is None:  # the cached route, without a coroutine on the common path
            self._route = router.cached(ref, routing_key, self._metadata)
            if self._route is None:
                self._route = await router.route(ref, routing_key, self._metadata, remaining(self._deadline))
        worker = router.first_untried(self._route, self._tried)
        if worker is None:
            self._route, worker = await router._next(ref, routing_key, self._route, self._tried,  # noqa: SLF001
                                                     self._metadata, self._deadline, self._last)
        self._start(worker)

    async def _attempt_or_end(self) -> None:
        """``_next_attempt``; if it fails (no worker left, the router unreachable), the stream is over: a later
        ``__anext__`` ends it instead of trying again (the failed worker was reported when it failed)."""
        try:
            await self._next_attempt()
        except BaseException:
            self._done = True
            raise

    def _fold(self) -> list[int]:
        """The tokens received so far (the messages held are folded into them)."""
        for msg in self._got:
            ids = msg.token_ids
            if len(ids) == 1:  # most messages: 2x cheaper than extending the list by the repeated field
                self._sent.append(ids[0])
            else:
                self._sent += ids
        self._got.clear()
        return self._sent

    def _end(self) -> None:
        self._done = True
        if self._route is not None and self._worker is not None:
            self._router._ended(self._route.key, self._worker.worker_id)  # noqa: SLF001 - its pair

    async def __anext__(self) -> worker_pb2.GenerateResponse:
        read = self._read
        if read is None or self._done:
            if self._done:  # after the last message: read the call to its end, so that it ends OK (dropped, it
                self._read = None  # would count as CANCELLED at the worker); its status no longer matters
                if read is not None:
                    try:  # noqa: SIM105 - contextlib.suppress costs 15x a try
                        await read()
                    except grpc.RpcError:
                        pass
                raise StopAsyncIteration
            await self._attempt_or_end()
            read = self._read
            assert read is not None
        while True:
            try:
                msg = await read()
                if msg is EOF:
                    assert self._call is not None
                    await raise_for_status(self._call)
                    raise StopAsyncIteration  # the worker ended the call OK before the last message
            except StopAsyncIteration:
                assert self._worker is not None
                verdict, error = ended_early(), ended_early_status(self._worker.address)
            except grpc.RpcError as err:
                if self._cancelled:  # the caller stopped it: not the worker's failure
                    self._end()
                    raise
                verdict, error = verdict_of(err), err
            except asyncio.CancelledError:  # the caller's task was cancelled, or cancel() while grpc read
                assert self._call is not None
                self._call.cancel()
                self._end()
                raise
            else:
                got = self._got
                got.append(msg)  # its tokens are read only if they are needed (a resume): 1/6 of the cost
                if msg.finished:
                    self._end()
                elif len(got) == FOLD_EVERY:
                    self._fold()
                return msg
            if not retryable(verdict, self._attempt):
                self._end()
                raise error
            assert self._route is not None and self._worker is not None
            self._router._stale(self._request.adapter, self._request.routing_key, self._route,  # noqa: SLF001
                                self._worker.worker_id)
            self._last = error
            await self._attempt_or_end()
            read = self._read
            assert read is not None

    def cancel(self) -> None:
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()


ALARM_IDLE_S = 10.0  # an alarm thread with nothing to do for this long ends; the next alarm starts another


class _Alarm:
    """Calls ``callback`` on ``loop`` at a monotonic time, from a thread of its own (started on first use, ended
    when idle).

    Not an asyncio timer: a pending timer handle costs the event loop something on every turn, and under load the
    report timer is pending nearly all the time. Measured with 100 concurrent streams on one loop (~1,100 turns): one
    idle timer added 0.8-1.1 ms of the loop thread's CPU to the window's ~24 ms."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: tuple[float, asyncio.AbstractEventLoop, Callable[[], object]] | None = None
        self._closed = False
        self._thread: threading.Thread | None = None

    def set(self, at: float, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> None:
        with self._cond:
            if self._closed:
                return
            self._due = (at, loop, callback)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="adapterfleet-route-reports", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed, self._due = True, None
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._due is None:
                    # idle: end (a router never closed leaves no thread), unless an alarm came as the wait timed out
                    if not self._cond.wait(ALARM_IDLE_S) and self._due is None:
                        self._thread = None
                        return
                    continue
                at, loop, callback = self._due
                if (delay := at - time.monotonic()) > 0:
                    self._cond.wait(delay)
                    continue
                self._due = None
                with contextlib.suppress(RuntimeError):  # the loop has closed: nothing is left to report to
                    loop.call_soon_threadsafe(callback)


class AsyncDirectRouter:
    """Routes from ``router`` (a stub on the router's channel), calls to workers over channels of their own."""

    def __init__(self, router: router_pb2_grpc.RouterStub, security: ClientSecurity = INSECURE):
        self._router = router
        self._security = security
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, worker_pb2_grpc.WorkerStub] = {}
        self._cache = RouteCache()
        self._reports = Reports()
        self._asking: dict[tuple[str, str], asyncio.Future] = {}
        self._tasks: set[asyncio.Future] = set()
        self._alarm = _Alarm()  # sends what is pending once it may be sent (see _flush)
        self._armed = self._closed = False
        self.route_calls = 0

    # --- routes -----------------------------------------------------------------------------------------------
    def cached(self, ref: str, routing_key: str, metadata: Metadata) -> Route | None:
        """The cached route for (ref, routing key), if any; one past its ``refresh_at`` is also asked for again in
        the background (see ``Route.due``)."""
        now = time.monotonic()
        route = self._cache.get(ref, routing_key, now)
        if route is not None and route.due(now) and (ref, routing_key) not in self._asking:
            # a failed refresh: the route lapses, and the next use asks
            self._shared_ask(ref, routing_key, metadata, REFRESH_TIMEOUT_S, refresh=True)
        return route

    async def route(self, ref: str, routing_key: str, metadata: Metadata, timeout: float | None,
                    exclude: Collection[str] = ()) -> Route:
        if not exclude:
            route = self.cached(ref, routing_key, metadata)
            if route is not None:
                return route
            asking = self._asking.get((ref, routing_key)) or self._shared_ask(ref, routing_key, metadata, timeout)
            return await asyncio.shield(asking)  # a caller that goes away stops waiting; the call goes on
        return await self._ask(ref, routing_key, metadata, timeout, exclude)

    def _shared_ask(self, ref: str, routing_key: str, metadata: Metadata, timeout: float | None,
                    refresh: bool = False) -> asyncio.Future:
        """One Route call for (ref, routing key) that every miss of the key shares while it runs, as a task of its
        own: the caller that started it can go away (its own timeout) without failing the others with its
        cancellation."""
        task = listed_task(self._asking, (ref, routing_key),
                           self._ask(ref, routing_key, metadata, timeout, refresh=refresh))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    async def _ask(self, ref: str, routing_key: str, metadata: Metadata, timeout: float | None,
                   exclude: Collection[str] = (), refresh: bool = False) -> Route:
        """One Route call, its answer cached. ``refresh``: it renews a route in use (the router counts no request
        for it)."""
        self.route_calls += 1
        exclude = set(exclude) | self._cache.avoid(time.monotonic())  # failed lately: left out
        try:
            pb = await self._router.Route(route_request(ref, routing_key, exclude, refresh), timeout=timeout,
                                          metadata=metadata)
        except grpc.RpcError as err:
            raise not_a_router(err) from None
        route = route_of(pb, time.monotonic(), refresh)
        self._cache.put(ref, routing_key, route)
        return route

    def first_untried(self, route: Route, tried: set[str]) -> Candidate | None:
        """The route's first candidate neither tried nor failed lately (None: ask ``_next``)."""
        avoid = self._cache.avoid(time.monotonic())
        for c in route.candidates:
            if c.worker_id not in tried and c.worker_id not in avoid:
                return c
        return None

    async def _next(self, ref: str, routing_key: str, route: Route, tried: set[str], metadata: Metadata,
                    deadline: float | None, last: grpc.RpcError | None) -> tuple[Route, Candidate]:
        avoid = tried | self._cache.avoid(time.monotonic())
        for c in route.candidates:
            if c.worker_id not in avoid:
                return route, c
        try:
            route = await self.route(ref, routing_key, metadata, remaining(deadline), exclude=avoid)
        except grpc.RpcError:
            back = next((c for c in route.candidates if c.worker_id not in tried), None)
            if back is not None:  # only workers that failed lately are left: one may be back
                return route, back
            if last is not None:
                raise last from None
            raise
        for c in route.candidates:
            if c.worker_id not in tried:
                return route, c
        raise last if last is not None else RuntimeError("the router answered a route without candidates")

    def _stale(self, ref: str, routing_key: str, route: Route, worker_id: str) -> None:
        self._cache.drop(ref, routing_key, route)
        self._cache.failed(worker_id, time.monotonic())
        self._reports.failed(route.key, worker_id)

    def _worker(self, address: str) -> worker_pb2_grpc.WorkerStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = self._channels[address] = open_aio_channel(address, self._security, WORKER_CHANNEL_OPTIONS)
            stub = self._stubs[address] = worker_pb2_grpc.WorkerStub(channel)
        return stub

    # --- calls ------------------------------------------------------------------------------------------------
    def generate(self, request: worker_pb2.GenerateRequest, *, timeout: float | None,
                 metadata: Metadata) -> AsyncDirectStream:
        return AsyncDirectStream(self, request, timeout, metadata)

    async def score(self, request: worker_pb2.ScoreRequest, *, timeout: float | None,
                    metadata: Metadata) -> worker_pb2.ScoreResponse:
        deadline = None if timeout is None else time.monotonic() + timeout
        ref, routing_key = request.adapter, request.routing_key
        route = await self.route(ref, routing_key, metadata, remaining(deadline))
        tried: set[str] = set()
        last: grpc.RpcError | None = None
        for attempt in range(MAX_ATTEMPTS):
            route, worker = await self._next(ref, routing_key, route, tried, metadata, deadline, last)
            tried.add(worker.worker_id)
            self._begun(route, worker.worker_id, attempt)
            try:
                reply = await self._worker(worker.address).Score(forward_score(request, route.key),
                                                                 timeout=remaining(deadline), metadata=metadata)
            except grpc.RpcError as err:
                if not retryable(verdict_of(err), attempt):
                    self._ended(route.key, worker.worker_id)
                    raise
                self._stale(ref, routing_key, route, worker.worker_id)
                last = err
            else:
                self._ended(route.key, worker.worker_id)
                return reply
        raise last if last is not None else RuntimeError("unreachable")

    # --- reports ----------------------------------------------------------------------------------------------
    def _begun(self, route: Route, worker_id: str, attempt: int) -> None:
        if attempt == 0:
            self._reports.first(route, worker_id)
        else:
            self._reports.retry(route.key, worker_id)
        self._flush()

    def _ended(self, key: str, worker_id: str) -> None:
        self._reports.finished(key, worker_id)
        self._flush()

    def _flush(self) -> None:
        if self._armed:  # the alarm sends it, at most REPORT_EVERY_S after the last report
            return
        now = time.monotonic()
        report = self._reports.take(now)
        if report is not None:
            self._send(report)
        elif self._reports.pending:
            self._armed = True
            self._alarm.set(now + self._reports.wait(now) + 0.001, asyncio.get_running_loop(), self._on_alarm)

    def _on_alarm(self) -> None:
        self._armed = False
        if not self._closed:
            self._flush()

    def _send(self, report: router_pb2.RouteReport) -> None:
        """Fire and forget: a lost report costs the router some accuracy, never a request."""
        task = asyncio.ensure_future(self._router.ReportRoutes(report, timeout=5.0))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # read: a lost report is not an error anyone must see

    async def close(self) -> None:
        self._closed = True
        self._alarm.close()
        report = self._reports.take(time.monotonic(), force=True)
        if report is not None:
            with contextlib.suppress(grpc.RpcError):  # the router is gone: nothing to keep current
                await self._router.ReportRoutes(report, timeout=1.0)
        for task in list(self._tasks):
            task.cancel()
        channels, self._channels, self._stubs = list(self._channels.values()), {}, {}
        for channel in channels:
            await channel.close()
