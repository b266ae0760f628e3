"""``FleetClient``: generate and score through a router (or straight at one worker: the API is the same), the
router's stats, and a worker's adapters (load, unload, pin, list, stats) at a worker's address.

Every call carries an ``x-request-id`` metadata entry (the caller's, else a fresh uuid4 hex), which the router
forwards to the worker. Every gRPC failure comes back as the typed :class:`AdapterFleetError` of its status
(NotFound, InvalidArgument, Unavailable, ...), with ``request_id`` set and quoted in the message.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import grpc

from adapterfleet.common.channel import REQUEST_ID_HEADER
from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import ClientSecurity, open_channel
from adapterfleet.common.security_config import PathLike, client_security
from adapterfleet.sdk.admin import AdapterState, WorkerStats, load_request, state_of, worker_stats_of, wrong_service
from adapterfleet.sdk.direct import DirectRouter
from adapterfleet.sdk.logprobs import TokenLogprobs, logprobs_of
from adapterfleet.v1 import router_pb2, router_pb2_grpc, worker_pb2, worker_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50071"
Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class GenerationChunk:
    """New tokens since the previous chunk; ``adapter_key`` is set on the first, ``finish_reason`` on the last."""

    token_ids: tuple[int, ...]
    text: str
    finished: bool
    finish_reason: str
    adapter_key: str
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token, with ``logprobs=True``
    completion_tokens: int = 0                # tokens generated so far; the total on the last chunk


@dataclass(frozen=True)
class Generation:
    """A whole generation: ``finish_reason`` is "stop" (a stop id or stop string) or "length"; ``adapter_key`` is
    the version that ran; ``prompt_tokens`` + ``completion_tokens`` are the usage."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str
    adapter_key: str
    prompt_tokens: int
    request_id: str
    completion_tokens: int = 0
    logprobs: tuple[TokenLogprobs, ...] = ()  # one per token, with ``logprobs=True``


@dataclass(frozen=True)
class Scores:
    """``logprobs[i]`` = log p(token i+1 | tokens 0..i): one entry fewer than the scored tokens."""

    logprobs: list[float]
    adapter_key: str
    request_id: str = ""

    @property
    def total_logprob(self) -> float:
        """The log-probability of the whole sequence after its first token."""
        return float(sum(self.logprobs))


@dataclass(frozen=True)
class AdapterRouteStats:
    key: str
    hits: int
    misses: int
    replications: int
    heat: float


@dataclass(frozen=True)
class WorkerRouteStats:
    id: str
    address: str
    region: str
    load: float
    inflight: int
    healthy: bool
    resident: int


@dataclass(frozen=True)
class RouterStats:
    """The router's counters: requests, retries, failures, affinity hit rate, per adapter key and per worker."""

    requests: int
    retries: int
    failures: int
    affinity_hit_rate: float
    region: str
    adapters: tuple[AdapterRouteStats, ...]
    workers: tuple[WorkerRouteStats, ...]


# --- shared by the sync and asyncio clients ------------------------------------------------------------------------
def new_request_id(request_id: str | None) -> str:
    return request_id or uuid.uuid4().hex


def call_metadata(extra: Metadata, request_id: str) -> tuple[tuple[str, str], ...]:
    return (*tuple(extra), (REQUEST_ID_HEADER, request_id))


def typed_error(err: grpc.RpcError, request_id: str, address: str = "", needs: str = "") -> AdapterFleetError:
    """The domain error of a failed call, with the request id as an attribute and in the message; ``needs``
    ("router", "worker"): the kind of server the call is for, named when ``address`` does not implement it."""
    out = error_from_rpc(err)
    if out.code == "UNIMPLEMENTED" and needs:  # gRPC's own message is only "Method not found!"
        out.message = wrong_service(address, needs)
    out.message = f"{out.message} (request id {request_id})"
    out.args = (out.message,)
    out.request_id = request_id  # type: ignore[attr-defined]
    return out


def generate_request(prompt: str | Sequence[int], *, adapter: str, max_new_tokens: int, temperature: float,
                     top_k: int, top_p: float, seed: int | None, stop_ids: Sequence[int] | None,
                     routing_key: str, stop: Sequence[str] | None = None, logprobs: bool = False,
                     top_logprobs: int = 0, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                     frequency_penalty: float = 0.0) -> worker_pb2.GenerateRequest:
    sampling = worker_pb2.SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed or 0,
                                         has_seed=seed is not None, repetition_penalty=repetition_penalty,
                                         presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
    if isinstance(stop, str):  # one stop string, not its characters
        stop = [stop]
    request = worker_pb2.GenerateRequest(adapter=adapter, max_new_tokens=max_new_tokens, sampling=sampling,
                                         stop_ids=list(stop_ids or ()), routing_key=routing_key,
                                         stop=list(stop or ()), logprobs=logprobs, top_logprobs=top_logprobs)
    if isinstance(prompt, str):
        request.prompt = prompt
    else:
        request.prompt_ids.extend(int(t) for t in prompt)
    return request


def score_request(text_or_ids: str | Sequence[int], *, adapter: str, routing_key: str) -> worker_pb2.ScoreRequest:
    if isinstance(text_or_ids, str):
        return worker_pb2.ScoreRequest(adapter=adapter, text=text_or_ids, routing_key=routing_key)
    return worker_pb2.ScoreRequest(adapter=adapter, token_ids=[int(t) for t in text_or_ids], routing_key=routing_key)


def chunk_of(msg: worker_pb2.GenerateResponse) -> GenerationChunk:
    return GenerationChunk(tuple(msg.token_ids), msg.text, msg.finished, msg.finish_reason, msg.adapter_key,
                           logprobs_of(msg.logprobs), msg.completion_tokens)


class Accumulator:
    """Folds the response messages of one stream into a :class:`Generation`."""

    def __init__(self, request_id: str):
        self.request_id = request_id
        self.tokens: list[int] = []
        self.text: list[str] = []
        self.reason = self.key = ""
        self.prompt_tokens = self.completion_tokens = 0
        self.logprobs: list[TokenLogprobs] = []

    def add(self, msg: worker_pb2.GenerateResponse) -> None:
        self.tokens += msg.token_ids
        self.text.append(msg.text)
        self.reason = msg.finish_reason or self.reason
        self.key = self.key or msg.adapter_key
        self.prompt_tokens = self.prompt_tokens or msg.prompt_tokens
        self.completion_tokens = max(self.completion_tokens, msg.completion_tokens)
        self.logprobs += logprobs_of(msg.logprobs)

    def result(self) -> Generation:
        return Generation("".join(self.text), tuple(self.tokens), self.reason, self.key, self.prompt_tokens,
                          self.request_id, self.completion_tokens or len(self.tokens), tuple(self.logprobs))


def stats_of(pb: router_pb2.RouterStats) -> RouterStats:
    return RouterStats(
        requests=pb.requests, retries=pb.retries, failures=pb.failures, affinity_hit_rate=pb.affinity_hit_rate,
        region=pb.region,
        adapters=tuple(AdapterRouteStats(a.key, a.hits, a.misses, a.replications, a.heat) for a in pb.adapters),
        workers=tuple(WorkerRouteStats(w.id, w.address, w.region, w.load, w.inflight, w.healthy, w.resident)
                      for w in pb.workers))


# --- the blocking client -------------------------------------------------------------------------------------------
class GenerationStream(Iterator[GenerationChunk]):
    """The chunks of one generation as they are produced; ``request_id`` names it; ``cancel()`` stops it early."""

    def __init__(self, call, request_id: str):
        self._call = call
        self.request_id = request_id

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> GenerationChunk:
        return chunk_of(self._next_message())

    def _next_message(self) -> worker_pb2.GenerateResponse:
        try:
            return next(self._call)
        except grpc.RpcError as err:
            raise typed_error(err, self.request_id) from None

    def cancel(self) -> None:
        self._call.cancel()


class FleetClient:
    """A blocking client of the router (or one worker). No connection is made until the first call.

    At a router: generate, stream, score, stats. At a worker: the same inference calls, and the worker's adapters
    (load_adapter, unload_adapter, pin, resident, worker_stats).
    ``tls_ca`` (the CA that signed the server's certificate) turns TLS on; ``tls_cert``/``tls_key`` add a client
    certificate (mTLS); ``token`` is sent as ``authorization: Bearer ...``. Or pass one ``security=ClientSecurity``.
    ``direct=True`` (at a router): ask the router where to go and stream to the worker itself (lookaside routing,
    :mod:`adapterfleet.sdk.direct`); workers must be reachable from here, with the same security."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None, metadata: Metadata = (),
                 tls_ca: PathLike = None, tls_cert: PathLike = None, tls_key: PathLike = None,
                 token: str | None = None, security: ClientSecurity | None = None, direct: bool = False):
        self.address = address
        self.timeout = timeout
        self.metadata = tuple(metadata)
        self.security = client_security(security, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
        self._channel = open_channel(address, self.security)
        self._worker = worker_pb2_grpc.WorkerStub(self._channel)
        self._router = router_pb2_grpc.RouterStub(self._channel)
        self._direct = DirectRouter(self._channel, self.security) if direct else None

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self._channel.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    def stream(self, prompt: str | Sequence[int], *, adapter: str = "", max_new_tokens: int = 16,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
               stop_ids: Sequence[int] | None = None, routing_key: str = "", request_id: str | None = None,
               timeout: float | None = None, stop: Sequence[str] | None = None, logprobs: bool = False,
               top_logprobs: int = 0, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
               frequency_penalty: float = 0.0) -> GenerationStream:
        """Generate from ``prompt`` (text, or token ids) on ``adapter`` (a ref; empty: the base model), yielding
        chunks as tokens are chosen. ``temperature`` 0 is greedy; ``seed`` makes sampling repeatable. ``stop``:
        strings that end the text (not included); ``logprobs``/``top_logprobs`` (0..20): each token's
        log-probability and the most likely alternatives; penalties: ``repetition_penalty`` (transformers'),
        ``presence_penalty`` and ``frequency_penalty`` (OpenAI's, -2..2)."""
        rid = new_request_id(request_id)
        request = generate_request(prompt, adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature,
                                   top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids, routing_key=routing_key,
                                   stop=stop, logprobs=logprobs, top_logprobs=top_logprobs,
                                   repetition_penalty=repetition_penalty, presence_penalty=presence_penalty,
                                   frequency_penalty=frequency_penalty)
        if self._direct is not None:
            call = self._direct.generate(request, timeout=self._timeout(timeout),
                                         metadata=call_metadata(self.metadata, rid))
        else:
            call = self._worker.Generate(request, timeout=self._timeout(timeout),
                                         metadata=call_metadata(self.metadata, rid))
        return GenerationStream(call, rid)

    def generate(self, prompt: str | Sequence[int], *, adapter: str = "", max_new_tokens: int = 16,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
                 stop_ids: Sequence[int] | None = None, routing_key: str = "", request_id: str | None = None,
                 timeout: float | None = None, stop: Sequence[str] | None = None, logprobs: bool = False,
                 top_logprobs: int = 0, repetition_penalty: float = 1.0, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0) -> Generation:
        """Like :meth:`stream`, but returns the whole :class:`Generation` when it is done."""
        stream = self.stream(prompt, adapter=adapter, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_k=top_k, top_p=top_p, seed=seed, stop_ids=stop_ids, routing_key=routing_key,
                             request_id=request_id, timeout=timeout, stop=stop, logprobs=logprobs,
                             top_logprobs=top_logprobs, repetition_penalty=repetition_penalty,
                             presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
        acc = Accumulator(stream.request_id)
        while True:
            try:
                acc.add(stream._next_message())  # noqa: SLF001 - our own stream class, one module over
            except StopIteration:
                return acc.result()

    def score(self, text_or_ids: str | Sequence[int], *, adapter: str = "", routing_key: str = "",
              request_id: str | None = None, timeout: float | None = None) -> Scores:
        """Log-probabilities of each token given the ones before it, on ``adapter``."""
        rid = new_request_id(request_id)
        request = score_request(text_or_ids, adapter=adapter, routing_key=routing_key)
        score = self._direct.score if self._direct is not None else self._worker.Score
        try:
            reply = score(request, timeout=self._timeout(timeout), metadata=call_metadata(self.metadata, rid))
        except grpc.RpcError as err:
            raise typed_error(err, rid) from None
        return Scores(list(reply.logprobs), reply.adapter_key, rid)

    def stats(self, *, request_id: str | None = None, timeout: float | None = None) -> RouterStats:
        """The router's counters (a router only: see :meth:`worker_stats` for a worker's)."""
        reply = self._unary(self._router.Stats, router_pb2.RouterStatsRequest(), request_id, timeout, "router")
        return stats_of(reply)

    # --- a worker's adapters (at a worker's address) ------------------------------------------------------------
    def load_adapter(self, ref: str, *, pin: bool = False, tier: str = "active", request_id: str | None = None,
                     timeout: float | None = None) -> AdapterState:
        """Make the worker hold ``ref`` in ``tier`` ("active", "host" or "disk") now, before requests need it;
        ``pin`` keeps it from eviction."""
        return state_of(self._unary(self._worker.LoadAdapter, load_request(ref, pin=pin, tier=tier), request_id,
                                    timeout))

    def unload_adapter(self, ref: str, *, request_id: str | None = None, timeout: float | None = None) -> bool:
        """Drop ``ref`` (a ref or a key) from every tier of the worker; False when it held none of it."""
        request = worker_pb2.UnloadAdapterRequest(ref=ref)
        return self._unary(self._worker.UnloadAdapter, request, request_id, timeout).unloaded

    def pin(self, ref: str, pinned: bool = True, *, request_id: str | None = None,
            timeout: float | None = None) -> AdapterState:
        """Pin ``ref`` on the worker (never evicted), or unpin it with ``pinned=False``."""
        request = worker_pb2.PinRequest(ref=ref, pinned=pinned)
        return state_of(self._unary(self._worker.Pin, request, request_id, timeout))

    def resident(self, *, request_id: str | None = None, timeout: float | None = None) -> list[AdapterState]:
        """Every adapter version the worker holds, in any tier."""
        reply = self._unary(self._worker.ListResident, worker_pb2.ListResidentRequest(), request_id, timeout)
        return [state_of(a) for a in reply.adapters]

    def worker_stats(self, *, request_id: str | None = None, timeout: float | None = None) -> WorkerStats:
        """The worker's counters and what it holds."""
        return worker_stats_of(self._unary(self._worker.Stats, worker_pb2.StatsRequest(), request_id, timeout))

    def _unary(self, method, request, request_id: str | None, timeout: float | None, needs: str = "worker"):
        rid = new_request_id(request_id)
        try:
            return method(request, timeout=self._timeout(timeout), metadata=call_metadata(self.metadata, rid))
        except grpc.RpcError as err:
            raise typed_error(err, rid, self.address, needs) from None
