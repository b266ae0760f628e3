"""A test-only worker: a real gRPC server that answers Score and Generate at once and announces itself to the
store's registry like a worker does. Tests drive its faults: its server can stop and start again on the same port
while it keeps announcing (a worker whose process lives but whose port refuses), and it can hang."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import grpc

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.helpers.servers import ServerThread


class _Servicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, owner: StubWorker):
        self.owner = owner

    async def Score(self, request, context):
        self.owner.count()
        if self.owner.hang.is_set():
            await asyncio.sleep(3600)
        return worker_pb2.ScoreResponse(logprobs=[-1.0] * (len(request.token_ids) - 1), adapter_key=request.adapter)

    async def Generate(self, request, context):
        self.owner.count()
        for i in range(request.max_new_tokens - len(request.resume_ids)):
            if i == 2 and self.owner.hang.is_set():  # hang mid-stream, after two tokens
                await asyncio.sleep(3600)
            last = i == request.max_new_tokens - len(request.resume_ids) - 1
            yield worker_pb2.GenerateResponse(token_ids=[100 + len(request.resume_ids) + i], finished=last,
                                              finish_reason="length" if last else "", adapter_key=request.adapter)


class StubWorker:
    def __init__(self, store_address: str, name: str, ttl_s: float = 2.0):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.id = f"stub-{name}"
        self.calls = 0
        self.hang = threading.Event()
        self._lock = threading.Lock()
        self._thread = ServerThread()
        self._server: grpc.aio.Server | None = None
        self._store = store_address
        self._ttl = ttl_s
        self.start_serving()
        self._announcer = self._thread.run(self._start_announcing())

    def count(self) -> None:
        with self._lock:
            self.calls += 1

    async def _start_announcing(self) -> asyncio.Task:
        return asyncio.ensure_future(self._announce())

    async def _announce(self) -> None:
        async with grpc.aio.insecure_channel(self._store) as channel:
            registry = registry_pb2_grpc.RegistryStub(channel)
            info = registry_pb2.WorkerInfo(id=self.id, address=self.address, region="local", capacity=64,
                                           ttl_seconds=self._ttl)
            while True:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    await registry.Announce(info, timeout=2.0)
                await asyncio.sleep(0.2)

    def start_serving(self) -> None:
        async def up() -> grpc.aio.Server:
            server = grpc.aio.server()
            worker_pb2_grpc.add_WorkerServicer_to_server(_Servicer(self), server)
            server.add_insecure_port(self.address)
            await server.start()
            return server

        self._server = self._thread.run(up())

    def stop_serving(self) -> None:
        """The port refuses connections from now on; the worker keeps announcing itself."""
        server, self._server = self._server, None
        if server is not None:
            self._thread.run(server.stop(0))

    def close(self) -> None:
        self.hang.clear()
        self._thread.loop.call_soon_threadsafe(self._announcer.cancel)
        self.stop_serving()
        self._thread.close()
