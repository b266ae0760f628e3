"""Cross-region failover: when no healthy worker of this router's region can take a request (none registered, all
down or draining, all refusing or beyond the load bound), the request goes to a fallback region's router, once.

The forwarded call carries the request id, the remaining deadline, the caller's token, and the header
``x-adapterfleet-forwarded-from: <this region>``: a router that receives a forwarded call never forwards it again
(no ping-pong between two regions that fall back on each other). The adapter travels as its resolved key
(``name@sha256:...``): digests are equal in every region, so the other region runs the same bytes. A generation
stream that broke here continues there like any retry: the tokens already sent go along as ``resume_ids``. The
fallback routers are tried in the order given; one that fails (transport, draining, refusing, no workers either)
is left for the next, and a status that is the request's own comes straight back.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence

import grpc

from adapterfleet.common import auth
from adapterfleet.common.channel import CHANNEL_OPTIONS, FORWARDED_HEADER, REQUEST_ID_HEADER
from adapterfleet.common.errors import AdapterFleetError, Unavailable
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import INSECURE, ClientSecurity, open_aio_channel
from adapterfleet.router.faults import verdict_of
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("adapterfleet.router")
FALLBACK_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.initial_reconnect_backoff_ms", 500),
                            ("grpc.max_reconnect_backoff_ms", 5000)]

# the region a call in flight here was forwarded from ("" for a caller's own call): set by the servicer
_forwarded_from: contextvars.ContextVar[str] = contextvars.ContextVar("forwarded_from", default="")


def forwarded_from(context) -> str:
    """The region that forwarded this call to us ("" when a caller sent it here directly)."""
    return str(dict(context.invocation_metadata() or ()).get(FORWARDED_HEADER, ""))


@contextlib.contextmanager
def receiving(region: str):
    """Handle a call forwarded from ``region`` (nothing when ""): it is never forwarded again."""
    token = _forwarded_from.set(region)
    try:
        yield
    finally:
        _forwarded_from.reset(token)


class HandOff(Exception):
    """No worker of this region can finish the request: hand it to a fallback region (raised by the proxy)."""

    def __init__(self, key: str, sent: Sequence[int], error: AdapterFleetError):
        super().__init__(error.message)
        self.key = key
        self.sent = list(sent)
        self.error = error


class Fallback:
    """The fallback routers of other regions, their channels, and the cross-region counts."""

    def __init__(self, routers: Sequence[str], region: str, security: ClientSecurity = INSECURE,
                 stall_s: float | None = 60.0):
        self.routers = tuple(routers)
        self.region = region
        self._security = security
        self._stall_s = stall_s
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.sent: Counter[str] = Counter()       # requests forwarded to each fallback router
        self.answered: Counter[str] = Counter()   # ... that it finished
        self.failed: Counter[str] = Counter()     # attempts there that failed (the next one was tried)
        self.received: Counter[str] = Counter()   # requests other regions forwarded here, by their region

    def may_hand_off(self) -> bool:
        """Whether a request this router cannot serve goes to another region: only a caller's own request."""
        return bool(self.routers) and not _forwarded_from.get()

    def count_received(self) -> None:
        if origin := _forwarded_from.get():
            self.received[origin] += 1

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_aio_channel(address, self._security, FALLBACK_CHANNEL_OPTIONS)
        return worker_pb2_grpc.WorkerStub(channel)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()

    def _metadata(self, request_id: str) -> tuple[tuple[str, str], ...]:
        return ((REQUEST_ID_HEADER, request_id), (FORWARDED_HEADER, self.region), *auth.forward_metadata())

    @staticmethod
    def _timeout(deadline: float | None) -> float | None:
        return None if deadline is None else max(deadline - time.monotonic(), 0.001)

    def _failed(self, address: str, err: grpc.aio.AioRpcError, hand: HandOff) -> AdapterFleetError:
        """A failed attempt at ``address``: the error to go on with (raised when it is the request's own)."""
        verdict = verdict_of(err)
        error = error_from_rpc(err)
        if not verdict.fault.retry:
            raise error
        self.failed[address] += 1
        log.warning("fallback router %s failed (%s) for a request region %s could not serve", address,
                    verdict.reason, self.region)
        error.message = (f"no worker of region {self.region} could take the request ({hand.error.message}); the "
                         f"fallback router {address} failed too: {error.message}")
        return error

    async def generate(self, request: worker_pb2.GenerateRequest, hand: HandOff, *, deadline: float | None,
                       request_id: str) -> AsyncIterator[worker_pb2.GenerateResponse]:
        sent = list(hand.sent)
        error: AdapterFleetError = hand.error
        for address in self.routers:
            forward = worker_pb2.GenerateRequest()
            forward.CopyFrom(request)
            forward.adapter = hand.key or request.adapter
            forward.resume_ids.extend(sent)
            self.sent[address] += 1
            call = self._stub(address).Generate(forward, timeout=self._timeout(deadline),
                                                metadata=self._metadata(request_id))
            messages = call.__aiter__()
            try:
                while True:
                    async with asyncio.timeout(self._stall_s):
                        msg = await anext(messages, None)
                    if msg is None:
                        self.failed[address] += 1
                        error = Unavailable(f"the fallback router {address} ended the stream before it finished")
                        break
                    sent += msg.token_ids
                    yield msg
                    if msg.finished:
                        self.answered[address] += 1
                        return
            except grpc.aio.AioRpcError as err:
                error = self._failed(address, err, hand)
            except TimeoutError:
                self.failed[address] += 1
                error = Unavailable(f"the fallback router {address} sent nothing for {self._stall_s:g}s")
            finally:
                call.cancel()
        raise error

    async def score(self, request: worker_pb2.ScoreRequest, hand: HandOff, *, deadline: float | None,
                    request_id: str) -> worker_pb2.ScoreResponse:
        error: AdapterFleetError = hand.error
        forward = worker_pb2.ScoreRequest()
        forward.CopyFrom(request)
        forward.adapter = hand.key or request.adapter
        for address in self.routers:
            self.sent[address] += 1
            try:
                result = await self._stub(address).Score(forward, timeout=self._timeout(deadline),
                                                          metadata=self._metadata(request_id))
            except grpc.aio.AioRpcError as err:
                error = self._failed(address, err, hand)
                continue
            self.answered[address] += 1
            return result
        raise error
