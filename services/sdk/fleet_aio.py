"""``AsyncFleetClient``: :class:`~adapterfleet.sdk.fleet.FleetClient` for asyncio code (``await``, ``async for``).

The grpc.aio channel is opened on first use, inside the running event loop, and closed by ``await close()``
or ``async with``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from adapterfleet.common.security import ClientSecurity, open_aio_channel
from adapterfleet.common.security_config import PathLike, client_security
from adapterfleet.sdk.admin import AdapterState, WorkerStats, load_request, state_of, worker_stats_of
from adapterfleet.sdk.direct_aio import AsyncDirectRouter
from adapterfleet.sdk.fleet import (
    DEFAULT_ADDRESS,
    Accumulator,
    Generation,
    GenerationChunk,
    Metadata,
    RouterStats,
    Scores,
    call_metadata,
    chunk_of,
    generate_request,
    new_request_id,
    score_request,
    stats_of,
    typed_error,
)
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc


class AsyncGenerationStream(AsyncIterator[GenerationChunk]):
    """The chunks of one generation (``async for``); ``request_id`` names it; ``cancel()`` stops it early."""

    def __init__(self, call: grpc.aio.UnaryStreamCall, request_id: str):
        self._call = call
        self._messages = call.__aiter__()
        self.request_id = request_id

    def __aiter__(self) -> AsyncGenerationStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        return chunk_of(await self._next_message())

    async def _next_message(self) -> worker_pb2.GenerateResponse:
        try:
            return await self._messages.__anext__()
        except grpc.RpcError as err:
            raise typed_error(err, self.request_id) from None

    def cancel(self) -> None:
        self._call.cancel()


class AsyncFleetClient:
    """An asyncio client of the router (or one worker); same calls (and security keywords) as FleetClient,
    awaited. ``direct=True``: lookaside routing, as for FleetClient."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None, metadata: Metadata = (),
                 tls_ca: PathLike = None, tls_cert: PathLike = None, tls_key: PathLike = None,
                 token: str | None = None, security: ClientSecurity | None = None, direct: bool = False):
        self.address = address
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.security = client_security(security, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
        self._channel: grpc.aio.Channel | None = None
        self._direct_on = direct
        self._direct: AsyncDirectRouter | None = None

    def _direct_router(self) -> AsyncDirectRouter | None:
        if self._direct_on and self._direct is None:
            self._direct = AsyncDirectRouter(self._stubs()[1], self.security)
        return self._direct

    def _stubs(self) -> tuple[worker_pb2_grpc.WorkerStub, router_pb2_grpc.RouterStub]:
        if self._channel is None:
            self._channel = open_aio_channel(self.address, self.security)
        return worker_pb2_grpc.WorkerStub(self._channel), router_pb2_grpc.RouterStub(self._channel)

    async def close(self) -> None:
        if self._direct is not None:
            direct, self._direct = self._direct, None
            await direct.close()
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()

    async def __aenter__(self) -> AsyncFleetClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def stream(self, prompt: str | Sequence[int], *, adapter: str = "", max_new_tokens: int = 16,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop_ids: Sequence[int] | None = None, routing_key: str = "", request_id: str | None = None,
               timeout: float | None = None, stop: Sequence[str] | None = None, logprobs: bool = False,
               top_logprobs: int = 0, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
               frequency_penalty: float = 0.0) -> AsyncGenerationStream:
        """``async for chunk in client.stream(prompt, adapter=...)``: chunks as tokens are chosen (the parameters
        are FleetClient.stream's)."""
        rid = new_request_id(request_id)
        request = generate_request(prompt, adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids, routing_key=routing_key,
                                   stop=stop, logprobs=logprobs, top_logprobs=top_logprobs,
                                   repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                   frequency_penalty=frequency_penalty)
        worker, _ = self._stubs()
        direct = self._direct_router()
        if direct is not None:
            call = direct.generate(request, timeout=self._timeout(timeout), metadata=call_metadata(self.metadata, rid))
        else:
            call = worker.Generate(request, timeout=self._timeout(timeout), metadata=call_metadata(self.metadata, rid))
        return AsyncGenerationStream(call, rid)

    async def generate(self, prompt: str | Sequence[int], *, adapter: str = "", max_new_tokens: int = 16,
                       temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                       stop_ids: Sequence[int] | None = None, routing_key: str = "", request_id: str | None = None,
                       timeout: float | None = None, stop: Sequence[str] | None = None, logprobs: bool = False,
                       top_logprobs: int = 0, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                       frequency_penalty: float = 0.0) -> Generation:
        """The whole :class:`Generation` of ``prompt`` on ``adapter``."""
        stream = self.stream(prompt, adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids, routing_key=routing_key,
                             request_id=request_id, timeout=timeout, stop=stop, logprobs=logprobs,
                             top_logprobs=top_logprobs, repetition_penalty=repetition_penalty,
                             presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
        acc = Accumulator(stream.request_id)
        while True:
            try:
                acc.add(await stream._next_message())  # noqa: SLF001 - our own stream class
            except StopAsyncIteration:
                return acc.result()

    async def score(self, text_or_ids: str | Sequence[int], *, adapter: str = "", routing_key: str = "",
                    request_id: str | None = None, timeout: float | None = None) -> Scores:
        """Log-probabilities of each token given the ones before it, on ``adapter``."""
        rid = new_request_id(request_id)
        worker, _ = self._stubs()
        direct = self._direct_router()
        score = direct.score if direct is not None else worker.Score
        try:
            reply = await score(score_request(text_or_ids, adapter=adapter, routing_key=routing_key),
                                       timeout=self._timeout(timeout), metadata=call_metadata(self.metadata, rid))
        except grpc.RpcError as err:
            raise typed_error(err, rid) from None
        return Scores(list(reply.logprobs), reply.adapter_key, rid)

    async def stats(self, *, request_id: str | None = None, timeout: float | None = None) -> RouterStats:
        """The router's counters."""
        _, router = self._stubs()
        reply = await self._unary(router.Stats, router_pb2.RouterStatsRequest(), request_id, timeout, "router")
        return stats_of(reply)

    # --- a worker's adapters (at a worker's address; see FleetClient) --------------------------------------------
    async def load_adapter(self, ref: str, *, pin: bool = False, tier: str = "active",
                           request_id: str | None = None, timeout: float | None = None) -> AdapterState:
        worker, _ = self._stubs()
        request = load_request(ref, pin=pin, tier=tier)
        return state_of(await self._unary(worker.LoadAdapter, request, request_id, timeout))

    async def unload_adapter(self, ref: str, *, request_id: str | None = None, timeout: float | None = None) -> bool:
        worker, _ = self._stubs()
        request = worker_pb2.UnloadAdapterRequest(ref=ref)
        return (await self._unary(worker.UnloadAdapter, request, request_id, timeout)).unloaded

    async def pin(self, ref: str, pinned: bool = True, *, request_id: str | None = None,
                  timeout: float | None = None) -> AdapterState:
        worker, _ = self._stubs()
        request = worker_pb2.PinRequest(ref=ref, pinned=pinned)
        return state_of(await self._unary(worker.Pin, request, request_id, timeout))

    async def resident(self, *, request_id: str | None = None, timeout: float | None = None) -> list[AdapterState]:
        worker, _ = self._stubs()
        reply = await self._unary(worker.ListResident, worker_pb2.ListResidentRequest(), request_id, timeout)
        return [state_of(a) for a in reply.adapters]

    async def worker_stats(self, *, request_id: str | None = None, timeout: float | None = None) -> WorkerStats:
        worker, _ = self._stubs()
        return worker_stats_of(await self._unary(worker.Stats, worker_pb2.StatsRequest(), request_id, timeout))

    async def _unary(self, method, request, request_id: str | None, timeout: float | None, needs: str = "worker"):
        rid = new_request_id(request_id)
        try:
            return await method(request, timeout=self._timeout(timeout), metadata=call_metadata(self.metadata, rid))
        except grpc.RpcError as err:
            raise typed_error(err, rid, self.address, needs) from None
