"""The one translation of Redis failures: outages become Unavailable naming Redis, bugs stay bugs; and every call the
index and the registry make goes through it."""

from __future__ import annotations

import inspect

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapterfleet.common.errors import Unavailable
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.redis_errors import redis_address, translate
from adapterfleet.store.registry import RedisRegistry


@pytest.mark.parametrize(("err", "needle"), [
    (RedisConnectionError("Error 111 connecting"), "is unreachable"),
    (RedisTimeoutError("Timeout reading from socket"), "is unreachable"),
    (BusyLoadingError("Redis is loading the dataset in memory"), "is loading its data"),
    (AuthenticationError("invalid username-password pair"), "refused the store's credentials"),
    (ReadOnlyError("You can't write against a read only replica."), "refused the command"),
    (ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist"),
     "refused the command"),
])
def test_outages_are_unavailable_naming_redis(err, needle):
    typed = translate(err, "10.0.0.7:6380")
    assert isinstance(typed, Unavailable) and typed.code == "UNAVAILABLE"
    assert typed.message.startswith("Redis at 10.0.0.7:6380 ") and needle in typed.message


def test_bugs_are_not_outages():
    assert translate(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "x") is None


def test_the_address_comes_from_the_client():
    import redis.asyncio as aioredis

    assert redis_address(aioredis.from_url("redis://10.1.2.3:6390/0")) == "10.1.2.3:6390"
    assert redis_address(aioredis.from_url("unix:///run/redis.sock")) == "unix:/run/redis.sock"
    assert redis_address(object()) == "(in-process)"


@pytest.mark.parametrize("cls", [RedisIndex, RedisRegistry])
def test_every_public_redis_call_is_translated(cls):
    """A method added later without @typed_redis would answer INTERNAL during an outage."""
    public = {name: fn for name, fn in vars(cls).items()
              if not name.startswith("_") and inspect.iscoroutinefunction(fn)}
    assert public
    assert [name for name, fn in public.items() if not hasattr(fn, "__wrapped__")] == []
