"""Wrap every handler of a grpc.aio server the same way, whatever its streaming kind (used by the interceptors)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import grpc

_FACTORIES = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler),
    ("stream_unary", grpc.stream_unary_rpc_method_handler),
    ("unary_stream", grpc.unary_stream_rpc_method_handler),
    ("stream_stream", grpc.stream_stream_rpc_method_handler),
)


def rewrap(handler: grpc.RpcMethodHandler | None, wrap_unary: Callable, wrap_stream: Callable,
           method: str) -> grpc.RpcMethodHandler | None:
    """``handler`` with its behaviour wrapped: ``wrap_unary(fn, method)`` for handlers that return one response
    (coroutines), ``wrap_stream(fn, method)`` for handlers that yield (async generators)."""
    if handler is None:
        return None
    for kind, factory in _FACTORIES:
        fn = getattr(handler, kind)
        if fn is None:
            continue
        wrap = wrap_stream if inspect.isasyncgenfunction(fn) else wrap_unary
        return factory(wrap(fn, method), request_deserializer=handler.request_deserializer,
                       response_serializer=handler.response_serializer)
    return handler
