"""How a client reaches a service: TLS material and a bearer token, and the channel built from them.

One home for it: every client path (CLI, SDK, router -> worker, router -> store, worker -> store, store -> store,
store -> worker) opens its channel through ``open_channel`` / ``open_aio_channel`` with a ``ClientSecurity``, so
that mTLS and tokens apply everywhere at once. With the default ``ClientSecurity()`` the channel is plaintext.

The PEM files are read each time a channel is opened, so a channel opened after the files were replaced
(certificate rotation) presents the new client certificate and trusts the new CA; open channels keep theirs.
The token travels as call metadata added by a client interceptor, not as gRPC call credentials: those are refused
on plaintext channels, and ``--insecure`` fleets with tokens are legitimate (tests, a mesh that does TLS itself).
A call that already carries ``authorization`` (a router forwarding its caller's identity) keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    return md


class _TokenInterceptor(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                        grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds ``authorization: Bearer <token>`` to every call on a blocking channel."""

    def __init__(self, token: str):
        self._header = bearer(token)

    def _details(self, details):
        return _CallDetails(details.method, details.timeout, _with_token(details.metadata, self._header),
                            details.credentials, getattr(details, "wait_for_ready", None),
                            getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


def _aio_interceptors(token: str) -> list[grpc.aio.ClientInterceptor]:
    header = bearer(token)

    def details(d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = d.metadata if d.metadata is not None else grpc.aio.Metadata()
        if AUTHORIZATION_HEADER not in metadata:
            metadata = grpc.aio.Metadata(*metadata, header)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready)

    class UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):
            return await continuation(details(client_call_details), request)

    class StreamUnary(grpc.aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
            return await continuation(details(client_call_details), request_iterator)

    class StreamStream(grpc.aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
            return await continuation(details(client_call_details), request_iterator)

    return [UnaryUnary(), UnaryStream(), StreamUnary(), StreamStream()]


def open_channel(address: str, security: ClientSecurity = INSECURE,
                 options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS) -> grpc.Channel:
    """A blocking channel to ``address`` under ``security``."""
    opts = security.channel_options(options)
    if security.tls:
        channel = grpc.secure_channel(address, _credentials(security), options=opts)
    else:
        channel = grpc.insecure_channel(address, options=opts)
    if security.token:
        channel = grpc.intercept_channel(channel, _TokenInterceptor(security.token))
    return channel


def open_aio_channel(address: str, security: ClientSecurity = INSECURE,
                     options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` under ``security``."""
    opts = security.channel_options(options)
    interceptors = _aio_interceptors(security.token) if security.token else None
    if security.tls:
        return grpc.aio.secure_channel(address, _credentials(security), options=opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=opts, interceptors=interceptors)
