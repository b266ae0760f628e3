"""Tokens on the HTTP gateway: the same check as the router's gRPC port (``Authorization: Bearer <token>``,
verified locally, revocations and tenant rate limits included), as an ASGI middleware. ``/health`` is open.
The identity is in effect while the request runs, so the gateway's checks and the token forwarded to workers
are the caller's own."""

from __future__ import annotations

import contextlib

from adapterfleet.common import auth
from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.router.http.errors import error_response

OPEN_PATHS = frozenset({"/health"})


class BearerAuth:
    def __init__(self, app, authenticator: auth.Authenticator):
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ())]
        held = contextlib.ExitStack()
        try:
            token = auth.bearer_token(headers)
            identity = self.auth.authenticate(token)
            tenant = auth.tenant_key(identity)
            if tenant is not None:
                self.auth.limiter.admit(tenant)
                # one of the tenant's concurrent streams while the request runs, as a Generate over gRPC holds
                # (--tenant-streams)
                held.enter_context(self.auth.limiter.stream(tenant))
        except AdapterFleetError as err:
            response = error_response(err)
            for key, value in err.trailing_metadata():
                if key == "retry-after-ms":
                    response.headers["retry-after"] = str(max(1, -(-int(value) // 1000)))
            await response(scope, receive, send)
            return
        with held, auth.acting_as(identity, token):
            await self.app(scope, receive, send)
