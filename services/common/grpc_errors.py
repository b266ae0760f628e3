"""The one place where domain errors become gRPC statuses (a server interceptor for grpc.aio).

AdapterFleetError subclasses carry their status code; anything else is logged with its traceback and answered
as INTERNAL without leaking internals. Also the one place clients turn a status back into a domain error.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import grpc

from adapterfleet.common import errors
from adapterfleet.common.interceptors import rewrap

log = logging.getLogger("adapterfleet.grpc")
_E = TypeVar("_E")

_BY_CODE: dict[str, type[errors.AdapterFleetError]] = {
    cls.code: cls
    for cls in (
        errors.InvalidArgument, errors.NotFound, errors.AlreadyExists, errors.FailedPrecondition,
        errors.ChecksumMismatch, errors.ResourceExhausted, errors.Unavailable, errors.DeadlineExceeded,
        errors.PermissionDenied, errors.Unauthenticated,
    )
}


def status_of(err: errors.AdapterFleetError) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, err.code)


def _subclasses(cls: type[_E]) -> list[type[_E]]:
    return [cls] + [s for sub in cls.__subclasses__() for s in _subclasses(sub)]


_BY_NAME: dict[str, type[errors.AdapterFleetError]] = {c.__name__: c for c in _subclasses(errors.AdapterFleetError)}
ERROR_TYPE_KEY = "af-error-type"  # trailing metadata: the domain error's class, so clients get Incompatible back


def error_from_rpc(err: grpc.RpcError) -> errors.AdapterFleetError:
    """Client side: an RpcError as the matching domain error (message kept): the exact class the server raised
    when it said which, else the class of the status code."""
    code = err.code().name if err.code() is not None else "UNKNOWN"
    trailing = dict(err.trailing_metadata() or ()) if hasattr(err, "trailing_metadata") else {}
    cls = _BY_NAME.get(trailing.get(ERROR_TYPE_KEY, ""))
    if cls is None or cls.code != code:
        cls = _BY_CODE.get(code, errors.AdapterFleetError)
    out = cls(err.details() or code)
    out.code = code
    return out


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.AdapterFleetError):
        await context.abort(status_of(exc), exc.message,
                            trailing_metadata=((ERROR_TYPE_KEY, type(exc).__name__), *exc.trailing_metadata()))
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
        return rewrap(await continuation(details), _wrap_unary, _wrap_stream, details.method)
