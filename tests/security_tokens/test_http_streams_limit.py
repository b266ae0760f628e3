"""The HTTP gateway holds one of the tenant's concurrent streams while a request runs, as a Generate over the
router's gRPC port does: --tenant-streams applies to HTTP callers too. The middleware in front of a stand-in app
that answers only when told."""

from __future__ import annotations

import asyncio

from adapterfleet.common.auth import make_authenticator
from adapterfleet.common.auth_config import TenantLimits
from adapterfleet.router.http.bearer import BearerAuth


def test_a_tenant_over_its_streams_gets_429_until_one_ends(issuer):
    authenticator = make_authenticator(issuer.auth(TenantLimits(max_streams=1)))
    assert authenticator is not None
    answer = asyncio.Event()

    async def app(scope, receive, send):  # a generation that runs until the test lets it end
        await answer.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gateway = BearerAuth(app, authenticator)

    async def call(token: str) -> int:
        sent: list[dict] = []
        scope = {"type": "http", "method": "POST", "path": "/v1/completions",
                 "headers": [(b"authorization", f"Bearer {token}".encode())]}

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        await gateway(scope, receive, send)
        return sent[0]["status"]

    async def main():
        acme, beta = issuer.token(["acme"], ["serve"]), issuer.token(["beta"], ["serve"])
        first = asyncio.ensure_future(call(acme))
        other_tenant = asyncio.ensure_future(call(beta))
        await asyncio.sleep(0.05)
        assert await asyncio.wait_for(call(acme), 10) == 429  # acme's one stream is held
        answer.set()
        assert await first == 200 and await other_tenant == 200
        assert await call(acme) == 200  # released when the request ended

    asyncio.run(main())
