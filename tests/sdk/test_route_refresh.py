"""Lookaside routes are refreshed ahead of their expiry, in the background: a client in steady use never waits for
Route. Both SDK routers (asyncio and blocking), against a scripted router and worker, each a real gRPC server on
port 0. The scripted router can hold its answers back (a slow router) or refuse them (a failing one)."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import pytest

from adapterfleet.sdk import direct_aio
from adapterfleet.sdk.direct import REFRESH_AT, DirectRouter, Route, route_of
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

KEY = "acme/a@sha256:" + "cd" * 32
TTL_S = 60.0  # long: a test makes a route due by moving its refresh time, never by sleeping


class Worker(worker_pb2_grpc.WorkerServicer):
    def Generate(self, request, context):
        for i in range(3):
            yield worker_pb2.GenerateResponse(token_ids=[i], finished=i == 2, adapter_key=request.adapter)

    def Score(self, request, context):
        return worker_pb2.ScoreResponse(adapter_key=request.adapter)


class Router(router_pb2_grpc.RouterServicer):
    """Answers Route with the worker; from the ``hold_from``-th call on it waits for ``release`` (or refuses, when
    ``refuse`` is set)."""

    def __init__(self, worker: str):
        self.worker = worker
        self.calls = 0
        self.refresh: list[bool] = []  # each call's RouteRequest.refresh
        self.reported = 0  # requests reported (beyond those the answers counted)
        self.hold_from = 10**9
        self.refuse = False
        self.release = threading.Event()
        self.held = threading.Event()

    def Route(self, request, context):
        self.calls += 1
        self.refresh.append(request.refresh)
        if self.calls >= self.hold_from:
            if self.refuse:
                context.abort(grpc.StatusCode.UNAVAILABLE, "router going away")
            self.held.set()
            self.release.wait(10)
        return router_pb2.RouteResponse(adapter_key=KEY, ttl_seconds=TTL_S, candidates=[
            router_pb2.RouteCandidate(address=self.worker, worker_id=f"w-{self.calls}")])

    def ReportRoutes(self, request, context):
        self.reported += sum(o.requests for o in request.outcomes)
        return router_pb2.RouteReportAck()


@pytest.fixture
def fleet():
    servers = []

    def serve(add, servicer) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    router = Router(serve(worker_pb2_grpc.add_WorkerServicer_to_server, Worker()))
    address = serve(router_pb2_grpc.add_RouterServicer_to_server, router)
    yield router, address
    router.release.set()
    for server in servers:
        server.stop(None)


def request() -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(adapter=KEY, prompt_ids=[1, 2], max_new_tokens=3)


def test_a_route_is_due_once_past_its_share_of_the_ttl():
    route = route_of(router_pb2.RouteResponse(adapter_key=KEY, ttl_seconds=8.0), now=100.0)
    assert route.expires == 108.0 and route.refresh_at == 100.0 + REFRESH_AT * 8.0
    assert not route.due(105.9)
    assert route.due(106.0)
    assert not route.due(106.5)  # once: its refresh is on its way
    assert not Route(KEY, (), expires=1e9).due(1e8)  # a route made without a ttl's share: never


def make_due(route: Route) -> None:
    route.refresh_at = time.monotonic()


class Blocking:
    """The blocking router's calls, as the test bodies use them."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.router = DirectRouter(self.channel)

    def generate(self) -> list[int]:
        return [t for msg in self.router.generate(request(), timeout=10, metadata=()) for t in msg.token_ids]

    def cached(self) -> Route | None:
        return self.router._cache.get(KEY, "", time.monotonic())

    def route_calls(self) -> int:
        return self.router.route_calls

    def close(self) -> None:
        self.router.close()
        self.channel.close()


def test_the_blocking_router_refreshes_a_due_route_without_waiting_for_it(fleet):
    router, address = fleet
    client = Blocking(address)
    try:
        assert client.generate() == [0, 1, 2] and router.calls == 1
        assert client.generate() == [0, 1, 2] and router.calls == 1  # within its ttl: no call
        first = client.cached()
        assert first is not None
        make_due(first)
        router.hold_from = 2  # the refresh is answered only when the test says so
        assert client.generate() == [0, 1, 2]  # served on the cached route while the refresh waits
        assert router.held.wait(5) and client.route_calls() == 2
        assert client.generate() == [0, 1, 2] and client.route_calls() == 2  # one refresh at a time
        router.release.set()
        deadline = time.monotonic() + 5
        while client.cached() is first and time.monotonic() < deadline:
            time.sleep(0.01)
        fresh = client.cached()
        assert fresh is not first and fresh is not None and fresh.candidates[0].worker_id == "w-2"
        assert client.generate() == [0, 1, 2] and router.calls == 2
        if client.router._sending is not None:  # a report on its way arrives
            client.router._sending.exception(timeout=5)
    finally:
        client.close()
    # the renewal said so (the router counts no request for it), and every request after the first was reported,
    # the first one on the renewed route included
    assert router.refresh == [False, True] and router.reported == 4


def test_the_blocking_router_keeps_the_route_when_a_refresh_fails(fleet):
    router, address = fleet
    client = Blocking(address)
    try:
        client.generate()
        first = client.cached()
        assert first is not None
        make_due(first)
        router.hold_from, router.refuse = 2, True
        assert client.generate() == [0, 1, 2]
        deadline = time.monotonic() + 5
        while router.calls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the refusal's callback has run
        assert client.cached() is first  # still within its ttl: used until it lapses
        assert client.generate() == [0, 1, 2] and router.calls == 2  # not asked again on every use
    finally:
        client.close()


def run_async(address: str, body):
    async def main():
        async with grpc.aio.insecure_channel(address) as channel:
            router = direct_aio.AsyncDirectRouter(router_pb2_grpc.RouterStub(channel))
            try:
                return await body(router)
            finally:
                await router.close()

    return asyncio.run(main())


async def tokens(router: direct_aio.AsyncDirectRouter) -> list[int]:
    return [t async for msg in router.generate(request(), timeout=10, metadata=()) for t in msg.token_ids]


def test_the_async_router_refreshes_a_due_route_without_waiting_for_it(fleet):
    router, address = fleet

    async def body(client: direct_aio.AsyncDirectRouter):
        assert await tokens(client) == [0, 1, 2] and router.calls == 1
        first = client._cache.get(KEY, "", time.monotonic())
        assert first is not None
        make_due(first)
        router.hold_from = 2
        assert await tokens(client) == [0, 1, 2]  # served on the cached route while the refresh waits
        assert await asyncio.to_thread(router.held.wait, 5) and client.route_calls == 2
        assert await tokens(client) == [0, 1, 2] and client.route_calls == 2  # one refresh at a time
        router.release.set()
        for _ in range(500):
            if client._cache.get(KEY, "", time.monotonic()) is not first:
                break
            await asyncio.sleep(0.01)
        fresh = client._cache.get(KEY, "", time.monotonic())
        assert fresh is not first and fresh is not None and fresh.candidates[0].worker_id == "w-2"
        assert await tokens(client) == [0, 1, 2] and router.calls == 2
        score = await client.score(worker_pb2.ScoreRequest(adapter=KEY), timeout=10, metadata=())
        assert score is not None and router.calls == 2  # Score uses the same cache
        while client._tasks:  # reports on their way arrive (close cancels them)
            await asyncio.sleep(0.01)

    run_async(address, body)
    assert router.refresh == [False, True] and router.reported == 4  # as for the blocking router


def test_the_async_router_keeps_the_route_when_a_refresh_fails(fleet):
    router, address = fleet

    async def body(client: direct_aio.AsyncDirectRouter):
        await tokens(client)
        first = client._cache.get(KEY, "", time.monotonic())
        assert first is not None
        make_due(first)
        router.hold_from, router.refuse = 2, True
        assert await tokens(client) == [0, 1, 2]
        for _ in range(500):
            if not client._tasks:
                break
            await asyncio.sleep(0.01)
        assert router.calls == 2 and client._cache.get(KEY, "", time.monotonic()) is first
        assert await tokens(client) == [0, 1, 2] and router.calls == 2  # not asked again on every use

    run_async(address, body)


def test_a_request_cancelled_while_its_route_is_asked_does_not_fail_those_that_share_the_answer(fleet):
    """Requests for one key share one Route call; the one that made the call goes away (the caller's own timeout)
    before the answer: the others still get it, and no second call is made."""
    router, address = fleet

    async def body(client: direct_aio.AsyncDirectRouter):
        router.hold_from = 1
        first = asyncio.ensure_future(tokens(client))
        assert await asyncio.to_thread(router.held.wait, 5)
        second = asyncio.ensure_future(tokens(client))  # shares the call under way
        await asyncio.sleep(0.05)
        first.cancel()
        await asyncio.sleep(0.05)
        router.release.set()
        assert await asyncio.wait_for(second, 10) == [0, 1, 2]
        assert first.cancelled() and router.calls == 1

    run_async(address, body)
