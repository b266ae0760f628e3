"""The observing interceptor: a request id for every call (the caller's ``x-request-id`` or a new one) set for the
logs, and the call counted and timed by method, adapter and final status code.

It must sit outside the ErrorInterceptor so that it sees the status a domain error was translated to.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc

from services.common.interceptors import rewrap
from services.common.logs import request_id
from services.common.metrics import ServiceMetrics

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
        rid = dict(details.invocation_metadata or ()).get("x-request-id") or uuid.uuid4().hex
        return rewrap(await continuation(details), self._wrap_unary(rid), self._wrap_stream(rid), details.method)

    def _finish(self, method: str, request, context, started: float, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, Exception):
            code = "CANCELLED"  # asyncio.CancelledError: the caller went away
        else:
            status = context.code()
            code = status.name if isinstance(status, grpc.StatusCode) else "OK" if error is None else "UNKNOWN"
        seconds = time.perf_counter() - started
        adapter = _adapter_of(request)
        self._metrics.observe(_short(method), adapter, code, seconds)
        if code != "OK":
            log.info("%s %s", _short(method), code, extra={"adapter": adapter, "code": code,
                                                            "duration_ms": round(seconds * 1000, 2)})

    def _wrap_unary(self, rid: str):
        def wrap(fn, method):
            async def handler(request, context):
                request_id.set(rid)
                started, error = time.perf_counter(), None
                try:
                    return await fn(request, context)
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._finish(method, request, context, started, error)

            return handler

        return wrap

    def _wrap_stream(self, rid: str):
        def wrap(fn, method):
            async def handler(request, context):
                request_id.set(rid)
                started, error = time.perf_counter(), None
                try:
                    async for item in fn(request, context):
                        yield item
                except BaseException as exc:
                    error = exc
                    raise
                finally:
                    self._finish(method, request, context, started, error)

            return handler

        return wrap
