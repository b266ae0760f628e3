"""AsyncDirectStream (the asyncio SDK's direct mode) against scripted workers and a scripted router, each a real
gRPC server on port 0: how a stream reads grpc's call, fails over with the tokens it received, and ends.

Both ways of reading a call are covered: grpc's own ``_read`` (what a real call gets) and the public ``read()``
(what an intercepted call, or a grpc without ``_read``, gets)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapterfleet.sdk import direct_aio
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

KEY = "acme/a@sha256:" + "ab" * 32
N = 100  # tokens a request asks for: more than FOLD_EVERY, so a resume folds the messages it holds


def token(i: int) -> int:
    return 1000 + i  # the "greedy" sequence every worker continues


class ScriptedWorker(worker_pb2_grpc.WorkerServicer):
    """Continues the sequence from ``resume_ids``; ``script`` says how a call goes wrong, if it does."""

    def __init__(self, script: str = "ok", after: int = 0, per_message: int = 1):
        self.script, self.after, self.per_message = script, after, per_message
        self.requests: list[worker_pb2.GenerateRequest] = []
        self.cancelled = asyncio.Event()

    async def Generate(self, request, context):
        self.requests.append(request)
        if self.script == "refuse":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt too long")
        i, sent = len(request.resume_ids), 0
        while i < request.max_new_tokens:
            if self.script in ("die", "end_early") and sent == self.after:
                if self.script == "die":
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "worker going away")
                return
            if self.script == "hang" and sent == self.after:
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    self.cancelled.set()
                    raise
            ids = [token(j) for j in range(i, min(i + self.per_message, request.max_new_tokens))]
            i += len(ids)
            sent += 1
            yield worker_pb2.GenerateResponse(token_ids=ids, finished=i == request.max_new_tokens,
                                              adapter_key=request.adapter)
        if self.script == "die_after_finish":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "worker going away")


class ScriptedRouter(router_pb2_grpc.RouterServicer):
    def __init__(self, addresses: list[str]):
        self.addresses = addresses
        self.reports: list[router_pb2.RouteReport] = []

    async def Route(self, request, context):
        return router_pb2.RouteResponse(adapter_key=KEY, ttl_seconds=60, candidates=[
            router_pb2.RouteCandidate(address=a, worker_id=f"w{i}") for i, a in enumerate(self.addresses)])

    async def ReportRoutes(self, request, context):
        self.reports.append(request)
        return router_pb2.RouteReportAck()


async def serve(add, servicer) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    add(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(params=["grpc _read", "public read()"])
def reading(request, monkeypatch):
    if request.param == "public read()":
        monkeypatch.setattr(direct_aio, "_GrpcResponseStream", None)
    return request.param


def run(workers: list[ScriptedWorker], body, routers: list[ScriptedRouter] | None = None):
    """``await body(router, workers' addresses)`` with the workers and a router that names them in order (appended
    to ``routers``, if given); the client's router is closed after ``body``."""

    async def main():
        servers = []
        try:
            addresses = []
            for w in workers:
                server, address = await serve(worker_pb2_grpc.add_WorkerServicer_to_server, w)
                servers.append(server)
                addresses.append(address)
            scripted = ScriptedRouter(addresses)
            if routers is not None:
                routers.append(scripted)
            server, address = await serve(router_pb2_grpc.add_RouterServicer_to_server, scripted)
            servers.append(server)
            async with grpc.aio.insecure_channel(address) as channel:
                router = direct_aio.AsyncDirectRouter(router_pb2_grpc.RouterStub(channel))
                try:
                    return await body(router, addresses)
                finally:
                    await router.close()
        finally:
            for server in servers:
                await server.stop(None)

    return asyncio.run(main())


def request(n: int = N) -> worker_pb2.GenerateRequest:
    return worker_pb2.GenerateRequest(adapter=KEY, prompt_ids=[1, 2, 3], max_new_tokens=n)


async def tokens_of(stream) -> list[int]:
    return [t async for msg in stream for t in msg.token_ids]


def test_a_real_call_is_read_through_grpcs_own_reader():
    """The fast path is the one in use: were grpc to drop ``_read``, the stream would still work (the other
    parametrisation of these tests) but would cost one more coroutine per message."""
    worker = ScriptedWorker()

    async def body(router, addresses):
        stream = router.generate(request(4), timeout=10, metadata=())
        first = await stream.__anext__()
        assert stream._read == stream._call._read
        return [*first.token_ids, *await tokens_of(stream)]

    assert run([worker], body) == [token(i) for i in range(4)]


@pytest.mark.parametrize("script", ["die", "end_early"])
def test_a_stream_that_breaks_continues_on_the_next_worker_with_every_token_it_received(reading, script):
    first, second = ScriptedWorker(script, after=70, per_message=1), ScriptedWorker()

    async def body(router, addresses):
        return await tokens_of(router.generate(request(), timeout=10, metadata=()))

    assert run([first, second], body) == [token(i) for i in range(N)]
    [resumed] = second.requests
    assert list(resumed.resume_ids) == [token(i) for i in range(70)]  # folded at 64 and held since


def test_messages_of_several_tokens_resume_from_all_of_them(reading):
    first, second = ScriptedWorker("die", after=30, per_message=3), ScriptedWorker()

    async def body(router, addresses):
        return await tokens_of(router.generate(request(), timeout=10, metadata=()))

    assert run([first, second], body) == [token(i) for i in range(N)]
    assert list(second.requests[0].resume_ids) == [token(i) for i in range(90)]


def test_a_request_error_is_raised_not_retried(reading):
    first, second = ScriptedWorker("refuse"), ScriptedWorker()

    async def body(router, addresses):
        with pytest.raises(grpc.RpcError) as err:
            await tokens_of(router.generate(request(), timeout=10, metadata=()))
        return err.value.code()

    assert run([first, second], body) == grpc.StatusCode.INVALID_ARGUMENT
    assert second.requests == []


def test_a_stream_that_ran_out_of_workers_stays_ended(reading):
    """The error reaches the caller once; asking the stream again ends it, without another round of attempts."""
    worker = ScriptedWorker("die", after=5)

    async def body(router, addresses):
        stream = router.generate(request(), timeout=10, metadata=())
        with pytest.raises(grpc.RpcError) as err:
            await tokens_of(stream)
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
        return err.value.code(), router.route_calls

    code, route_calls = run([worker], body)
    assert code == grpc.StatusCode.UNAVAILABLE
    assert len(worker.requests) == 1 and route_calls == 2  # the first Route, and one without the failed worker


def test_a_failure_after_the_last_message_ends_the_stream_as_it_is(reading):
    first, second = ScriptedWorker("die_after_finish"), ScriptedWorker()

    async def body(router, addresses):
        return await tokens_of(router.generate(request(8), timeout=10, metadata=()))

    assert run([first, second], body) == [token(i) for i in range(8)]
    assert second.requests == []


def test_cancel_stops_the_stream_and_the_workers_call(reading):
    worker = ScriptedWorker("hang", after=3)

    async def body(router, addresses):
        stream = router.generate(request(), timeout=10, metadata=())
        got = [t for _ in range(3) for t in (await stream.__anext__()).token_ids]
        pending = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.1)
        stream.cancel()
        with pytest.raises(asyncio.CancelledError):  # as grpc's own iterator raises for a call cancelled
            await pending
        await asyncio.wait_for(worker.cancelled.wait(), 10)
        return got

    assert run([worker], body) == [token(i) for i in range(3)]
    assert len(worker.requests) == 1  # not retried elsewhere: the caller stopped it


def test_outcomes_reach_the_router_when_it_closes():
    routers: list[ScriptedRouter] = []

    async def body(router, addresses):
        for _ in range(5):
            await tokens_of(router.generate(request(4), timeout=10, metadata=()))

    run([ScriptedWorker()], body, routers)
    finished = sum(o.finished for r in routers[0].reports for o in r.outcomes)
    assert finished == 5
