"""Redis failures as typed errors: the one translation for every store module that talks to Redis (the index, the
registry).

A Redis that cannot be reached, times out, is still loading its data, is read-only (a replica after a failover) or
refuses writes (out of memory, MISCONF) is UNAVAILABLE, naming its address and what to check: a retry may succeed
once it is back. Anything else (a wrong type, a script bug) is left alone and surfaces as INTERNAL.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapterfleet.common.errors import Unavailable

_REFUSED = (ReadOnlyError, OutOfMemoryError, TryAgainError, ClusterDownError)
_REFUSED_PREFIXES = ("MISCONF", "LOADING", "MASTERDOWN")
_CHECK = "check --redis-url and that the server is up; the call may be retried"


def redis_address(client: Any) -> str:
    """``host:port`` (or ``unix:<path>``) of a redis-py client, for messages; never raises."""
    kw = getattr(getattr(client, "connection_pool", None), "connection_kwargs", None) or {}
    if kw.get("path"):
        return f"unix:{kw['path']}"
    if kw.get("host"):
        return f"{kw['host']}:{kw.get('port', 6379)}"
    return "(in-process)"


def _short(err: Exception, limit: int = 200) -> str:
    text = str(err) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def translate(err: RedisError, address: str) -> Unavailable | None:
    """The typed error for ``err``, or None when it is not an outage (a bug: leave it to surface as INTERNAL)."""
    if isinstance(err, (AuthenticationError, AuthorizationError)):
        return Unavailable(f"Redis at {address} refused the store's credentials ({_short(err)}); check the "
                           "username and password in --redis-url")
    if isinstance(err, BusyLoadingError):
        return Unavailable(f"Redis at {address} is loading its data ({_short(err)}); retry in a few seconds")
    if isinstance(err, (RedisConnectionError, RedisTimeoutError)):
        return Unavailable(f"Redis at {address} is unreachable ({_short(err)}); {_CHECK}")
    if isinstance(err, _REFUSED) or (isinstance(err, ResponseError) and str(err).startswith(_REFUSED_PREFIXES)):
        return Unavailable(f"Redis at {address} refused the command ({_short(err)}); {_CHECK}")
    return None


class TalksToRedis(Protocol):
    @property
    def redis_address(self) -> str: ...


S = TypeVar("S", bound=TalksToRedis)
P = ParamSpec("P")
R = TypeVar("R")


def typed_redis(
    fn: Callable[Concatenate[S, P], Awaitable[R]],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Decorate a coroutine method of an object with a ``redis_address``: Redis outages raise Unavailable."""

    @functools.wraps(fn)
    async def call(self: S, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kwargs)
        except RedisError as err:
            typed = translate(err, self.redis_address)
            if typed is None:
                raise
            raise typed from err

    return call
