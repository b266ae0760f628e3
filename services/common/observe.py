"""The observing interceptor: a request id for every call (the caller's ``x-request-id`` or a new one) set for the
logs, and the call counted and timed by method, adapter and final status code.

It must sit outside the ErrorInterceptor so that it sees the status a domain error was translated to.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Iterator

import grpc

from adapterfleet.common.channel import REQUEST_ID_HEADER
from adapterfleet.common.interceptors import rewrap
from adapterfleet.common.logs import request_id
from adapterfleet.common.metrics import ServiceMetrics

log = logging.getLogger("adapterfleet.access")


def _adapter_of(request) -> str | None:
    """The adapter a call is about: Generate/Score ``adapter`` ('' is the base model), ``ref`` or ``name``; None
    for calls about no adapter, or client streams whose first message is not read yet."""
    for field in ("adapter", "ref", "name"):
        value = getattr(request, field, None)
        if isinstance(value, str):
            return value
    return None


def _short(method: str) -> str:
    return method.rsplit("/", 1)[-1]


class ObserveInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: ServiceMetrics):
        self._metrics = metrics

    async def intercept_service(self, continuation, details):
        rid = dict(details.invocation_metadata or ()).get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        return rewrap(await continuation(details), functools.partial(self._unary, rid=rid),
                      functools.partial(self._stream, rid=rid), details.method)

    def _unary(self, fn, method: str, *, rid: str):
        async def handler(request, context):
            with self._observed(method, request, context, rid):
                return await fn(request, context)

        return handler

    def _stream(self, fn, method: str, *, rid: str):
        async def handler(request, context):
            with self._observed(method, request, context, rid):
                async for item in fn(request, context):
                    yield item

        return handler

    @contextlib.contextmanager
    def _observed(self, method: str, request, context, rid: str) -> Iterator[None]:
        """The call runs with its request id set; when it ends, however it ends, it is counted and timed."""
        request_id.set(rid)
        started, code = time.perf_counter(), None
        try:
            yield
        except Exception:
            code = "UNKNOWN"
            raise
        except BaseException:  # asyncio.CancelledError: the caller went away
            code = "CANCELLED"
            raise
        finally:
            status = context.code()
            if code != "CANCELLED":
                code = status.name if isinstance(status, grpc.StatusCode) else code or "OK"
            seconds = time.perf_counter() - started
            adapter = _adapter_of(request)
            self._metrics.observe(_short(method), adapter, code, seconds)
            if code != "OK":
                log.info("%s %s", _short(method), code, extra={"adapter": adapter, "code": code,
                                                                "duration_ms": round(seconds * 1000, 2)})
