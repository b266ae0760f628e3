"""Per-tenant limits: request rate (token bucket), concurrent streams, push size and push rate.

A refusal is ``RateLimited`` (RESOURCE_EXHAUSTED) whose message says when to retry and whose trailing metadata
carries ``retry-after-ms``. Service identities (tenant ``*``: workers, routers) are not limited; a caller's token
forwarded by a router is limited at the router and again at the worker (each hop counts its own calls).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from adapterfleet.common.auth_config import TenantLimits
from adapterfleet.common.errors import RateLimited, ResourceExhausted

__all__ = ["TenantLimiter", "TenantLimits", "TokenBucket"]


class TokenBucket:
    def __init__(self, rate: float, burst: float, now: float):
        self.rate, self.burst = rate, burst
        self.tokens, self.last = burst, now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when it was there, else the seconds until one will be."""
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class TenantLimiter:
    """The limits of one service, per tenant key (``tenant_key`` of an identity)."""

    def __init__(self, limits: TenantLimits, clock: Callable[[], float] = time.monotonic, max_tenants: int = 65536):
        self.limits = limits
        self._clock = clock
        self._rate: dict[str, TokenBucket] = {}
        self._pushes: dict[str, TokenBucket] = {}
        self._streams: dict[str, int] = {}
        self._max_tenants = max_tenants
        self.refused = 0

    @property
    def active(self) -> bool:
        lim = self.limits
        return bool(lim.requests_per_s or lim.max_streams or lim.max_push_bytes or lim.pushes_per_min)

    def _bucket(self, table: dict[str, TokenBucket], tenant: str, rate: float, burst: float) -> TokenBucket:
        bucket = table.get(tenant)
        if bucket is None:
            if len(table) >= self._max_tenants:  # forget the oldest: a full bucket again, never a leak
                table.pop(next(iter(table)))
            bucket = table[tenant] = TokenBucket(rate, burst, self._clock())
        return bucket

    def _refuse(self, message: str, wait_s: float) -> RateLimited:
        self.refused += 1
        return RateLimited(f"{message}; retry in {wait_s:.3g}s (the retry-after-ms trailer says the same)", wait_s)

    def admit(self, tenant: str) -> None:
        """One call of ``tenant``; RateLimited past its rate."""
        rate = self.limits.requests_per_s
        if not rate:
            return
        wait = self._bucket(self._rate, tenant, rate, self.limits.burst or max(1.0, rate)).take(self._clock())
        if wait:
            raise self._refuse(f"tenant {tenant!r} is over its limit of {rate:g} requests/s", wait)

    @contextlib.contextmanager
    def stream(self, tenant: str) -> Iterator[None]:
        """Hold one of ``tenant``'s concurrent streams while the block runs; RateLimited when all are held."""
        limit = self.limits.max_streams
        if not limit:
            yield
            return
        held = self._streams.get(tenant, 0)
        if held >= limit:
            raise self._refuse(f"tenant {tenant!r} has {held} streams open, its limit; close one", 1.0)
        self._streams[tenant] = held + 1
        try:
            yield
        finally:
            left = self._streams[tenant] - 1
            if left:
                self._streams[tenant] = left
            else:
                del self._streams[tenant]

    def push(self, tenant: str, nbytes: int) -> None:
        """A push of ``nbytes`` by ``tenant``: within its size limit and push rate, else refused."""
        lim = self.limits
        if lim.max_push_bytes and nbytes > lim.max_push_bytes:
            self.refused += 1
            raise ResourceExhausted(f"this push is {nbytes} bytes, more than tenant {tenant!r}'s limit of "
                              f"{lim.max_push_bytes} bytes per push; push a smaller adapter or ask an operator to "
                              "raise --tenant-max-push-bytes")
        if lim.pushes_per_min:
            rate = lim.pushes_per_min / 60.0
            wait = self._bucket(self._pushes, tenant, rate, max(1.0, lim.pushes_per_min / 10)).take(self._clock())
            if wait:
                raise self._refuse(f"tenant {tenant!r} is over its limit of {lim.pushes_per_min:g} pushes/min", wait)
