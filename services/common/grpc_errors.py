"""The one place where domain errors become gRPC statuses (a server interceptor for grpc.aio).

AdapterFleetError subclasses carry their status code; anything else is logged with its traceback and answered
as INTERNAL without leaking internals. Also the one place clients turn a status back into a domain error.
"""

from __future__ import annotations

import inspect
import logging

import grpc

from services.common import errors

log = logging.getLogger("adapterfleet.grpc")

_BY_CODE: dict[str, type[errors.AdapterFleetError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
        errors.ChecksumMismatch, errors.ResourceExhausted, errors.Unavailable, errors.DeadlineExceeded,
        errors.PermissionDenied,
    )
}


def status_of(err: errors.AdapterFleetError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code)


def error_from_rpc(err: grpc.RpcError) -> errors.AdapterFleetError:
    """Client side: an RpcError as the matching domain error (message kept)."""
    code = err.code().name if err.code() is not None else "UNKNOWN"
    cls = _BY_CODE.get(code, errors.AdapterFleetError)
    out = cls(err.details() or code)
    out.code = code
    return out


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.AdapterFleetError):
        await context.abort(status_of(exc), exc.message)
    log.exception("unexpected error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the server log")


def _wrap_unary(fn, method):
    async def handler(request, context):
        try:
            return await fn(request, context)
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:  # noqa: BLE001 - translated here, once
            await _abort(context, exc, method)

    return handler


def _wrap_stream(fn, method):
    async def handler(request, context):
        try:
            async for item in fn(request, context):
                yield item
        except (grpc.aio.AbortError, grpc.RpcError):
            raise
        except Exception as exc:  # noqa: BLE001
            await _abort(context, exc, method)

    return handler


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method
        for kind, factory in (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        ):
            fn = getattr(handler, kind)
            if fn is None:
                continue
            wrap = _wrap_stream if inspect.isasyncgenfunction(fn) else _wrap_unary
            return factory(wrap(fn, method), request_deserializer=handler.request_deserializer,
                           response_serializer=handler.response_serializer)
        return handler
