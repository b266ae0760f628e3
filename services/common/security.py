"""How a client reaches a service: TLS material and a bearer token, and the channel built from them.

One home for it: every client path (CLI, SDK, router -> worker, router -> store, worker -> store, store -> store,
store -> worker) opens its channel through ``open_channel`` / ``open_aio_channel`` with a ``ClientSecurity``, so
that mTLS and tokens apply everywhere at once. With the default ``ClientSecurity()`` the channel is plaintext.

The PEM files are read each time a channel is opened, so a channel opened after the files were replaced
(certificate rotation) presents the new client certificate and trusts the new CA; open channels keep theirs.
The token travels as call metadata added when a call is made (a thin channel wrapper), not as gRPC call
credentials: those are refused on plaintext channels, and ``--insecure`` fleets with tokens are legitimate (tests, a
mesh that does TLS itself).
A call that already carries ``authorization`` (a router forwarding its caller's identity) keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import grpc

from adapterfleet.common.channel import AUTHORIZATION_HEADER, CHANNEL_OPTIONS
from adapterfleet.common.security_config import INSECURE, ClientSecurity, ServerTLS

__all__ = ["INSECURE", "ClientSecurity", "ServerTLS", "bearer", "open_aio_channel", "open_channel"]


def _credentials(security: ClientSecurity) -> grpc.ChannelCredentials:
    """TLS channel credentials from the files as they are now."""
    root, key, chain = security.read_pem()
    return grpc.ssl_channel_credentials(root_certificates=root, private_key=key, certificate_chain=chain)


def bearer(token: str) -> tuple[str, str]:
    return AUTHORIZATION_HEADER, f"Bearer {token.strip()}"


def _with_token(metadata, header: tuple[str, str]):
    md = list(metadata or ())
    if any(k == AUTHORIZATION_HEADER for k, _ in md):
        return metadata
    md.append(header)
    return tuple(md)


class _TokenMultiCallable:
    """A channel's multi-callable whose calls carry the token unless they carry ``authorization`` already."""

    def __init__(self, inner, header: tuple[str, str]):
        self._inner, self._header = inner, header

    def __call__(self, request, *args, metadata=None, **kwargs):
        return self._inner(request, *args, metadata=_with_token(metadata, self._header), **kwargs)

    def __getattr__(self, name: str):  # with_call, future (blocking channels)
        attr = getattr(self._inner, name)
        if name in ("with_call", "future"):
            header = self._header
            return lambda request, *a, metadata=None, **kw: attr(request, *a, metadata=_with_token(metadata, header),
                                                                 **kw)
        return attr


class _TokenChannel:
    """Wraps a blocking or asyncio channel so that every call carries ``authorization: Bearer <token>``.

    Not a client interceptor: grpc.aio wraps every intercepted call in Python objects that every streamed message
    then crosses (measured in benchmarks/router_overhead.py --secure), while the metadata is needed once per call.
    The calls returned are the channel's own."""

    _FACTORIES = frozenset({"unary_unary", "unary_stream", "stream_unary", "stream_stream"})

    def __init__(self, inner, token: str):
        self._inner = inner
        self._header = bearer(token)

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name in self._FACTORIES:
            header = self._header
            return lambda *args, **kwargs: _TokenMultiCallable(attr(*args, **kwargs), header)
        return attr

    def __enter__(self):
        self._inner.__enter__()
        return self

    def __exit__(self, *exc):
        return self._inner.__exit__(*exc)

    async def __aenter__(self):
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._inner.__aexit__(*exc)


def open_channel(address: str, security: ClientSecurity = INSECURE,
                 options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS) -> grpc.Channel:
    """A blocking channel to ``address`` under ``security``."""
    opts = security.channel_options(options)
    if security.tls:
        channel = grpc.secure_channel(address, _credentials(security), options=opts)
    else:
        channel = grpc.insecure_channel(address, options=opts)
    return cast(grpc.Channel, _TokenChannel(channel, security.token)) if security.token else channel


def open_aio_channel(address: str, security: ClientSecurity = INSECURE,
                     options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` under ``security``."""
    opts = security.channel_options(options)
    if security.tls:
        channel = grpc.aio.secure_channel(address, _credentials(security), options=opts)
    else:
        channel = grpc.aio.insecure_channel(address, options=opts)
    return cast(grpc.aio.Channel, _TokenChannel(channel, security.token)) if security.token else channel
