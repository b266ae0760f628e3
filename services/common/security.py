"""How a client reaches a service: TLS material and a bearer token, and the channel built from them.

One home for it: every client path (CLI, SDK, router -> worker, router -> store, worker -> store, store -> store,
store -> worker) opens its channel through ``open_channel`` / ``open_aio_channel`` with a ``ClientSecurity``, so
that mTLS and tokens apply everywhere at once. With the default ``ClientSecurity()`` the channel is plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS


@dataclass(frozen=True)
class ClientSecurity:
    """``tls_ca`` turns TLS on (the server's certificate must chain to it); ``tls_cert``/``tls_key`` present a
    client certificate (mTLS); ``token`` is sent as ``authorization: Bearer <token>`` on every call."""

    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None


INSECURE = ClientSecurity()


def open_channel(address: str, security: ClientSecurity = INSECURE,
                 options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS) -> grpc.Channel:
    """A blocking channel to ``address`` under ``security``."""
    # TODO(issue 10): TLS credentials and the bearer token
    return grpc.insecure_channel(address, options=list(options))


def open_aio_channel(address: str, security: ClientSecurity = INSECURE,
                     options: Sequence[tuple[str, object]] = CHANNEL_OPTIONS) -> grpc.aio.Channel:
    """An asyncio channel to ``address`` under ``security``."""
    # TODO(issue 10): TLS credentials and the bearer token
    return grpc.aio.insecure_channel(address, options=list(options))
