"""open_channel / open_aio_channel put the token on every kind of call, over TLS and plaintext, and leave a
forwarded caller's authorization alone. A real gRPC server on port 0 records what arrives."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import pytest

from adapterfleet.common.security import ClientSecurity, open_aio_channel, open_channel
from adapterfleet.common.tls import server_credentials
from tests.security_tls.tls_helpers import client, make_material, server_tls

IDENTITY = (lambda b: b, lambda b: b)  # raw bytes in and out


class Recorder(grpc.GenericRpcHandler):
    def __init__(self):
        self.seen: list[tuple[str, str | None]] = []

    def _auth(self, context) -> None:
        md = dict(context.invocation_metadata())
        self.seen.append((context.peer(), md.get("authorization")))

    def service(self, details):
        kind = details.method.rsplit("/", 1)[1]

        def uu(req, ctx):
            self._auth(ctx)
            return req

        def us(req, ctx):
            self._auth(ctx)
            yield req

        def su(reqs, ctx):
            self._auth(ctx)
            return b"".join(reqs)

        def ss(reqs, ctx):
            self._auth(ctx)
            yield from reqs

        make = {"uu": grpc.unary_unary_rpc_method_handler, "us": grpc.unary_stream_rpc_method_handler,
                "su": grpc.stream_unary_rpc_method_handler, "ss": grpc.stream_stream_rpc_method_handler}[kind]
        return make({"uu": uu, "us": us, "su": su, "ss": ss}[kind], *IDENTITY)


@pytest.fixture(params=["plaintext", "mtls"])
def served(request, tmp_path):
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[recorder])
    if request.param == "mtls":
        m = make_material(tmp_path / "sec")
        port = server.add_secure_port("127.0.0.1:0", server_credentials(server_tls(m)))
        security = client(m, token="tok-1")
    else:
        port = server.add_insecure_port("127.0.0.1:0")
        security = ClientSecurity(token="tok-1")
    server.start()
    yield f"127.0.0.1:{port}", security, recorder
    server.stop(0)


def _calls(channel):
    return [channel.unary_unary("/t/uu", *IDENTITY), channel.unary_stream("/t/us", *IDENTITY),
            channel.stream_unary("/t/su", *IDENTITY), channel.stream_stream("/t/ss", *IDENTITY)]


def test_blocking_channel_sends_the_token_on_every_kind_of_call(served):
    address, security, recorder = served
    with open_channel(address, security) as channel:
        uu, us, su, ss = _calls(channel)
        assert uu(b"x", timeout=10) == b"x"
        assert list(us(b"y", timeout=10)) == [b"y"]
        assert su(iter([b"a", b"b"]), timeout=10) == b"ab"
        assert list(ss(iter([b"c"]), timeout=10)) == [b"c"]
        assert uu(b"z", timeout=10, metadata=[("authorization", "Bearer caller")]) == b"z"
    assert [auth for _, auth in recorder.seen] == ["Bearer tok-1"] * 4 + ["Bearer caller"]


def test_aio_channel_sends_the_token_on_every_kind_of_call(served):
    address, security, recorder = served

    async def go():
        async with open_aio_channel(address, security) as channel:
            uu, us, su, ss = _calls(channel)
            assert await uu(b"x", timeout=10) == b"x"
            assert [m async for m in us(b"y", timeout=10)] == [b"y"]
            assert await su(iter([b"a", b"b"]), timeout=10) == b"ab"
            assert [m async for m in ss(iter([b"c"]), timeout=10)] == [b"c"]
            assert await uu(b"z", timeout=10, metadata=grpc.aio.Metadata(("authorization", "Bearer caller"))) == b"z"

    asyncio.run(go())
    assert [auth for _, auth in recorder.seen] == ["Bearer tok-1"] * 4 + ["Bearer caller"]


def test_no_token_no_header(served):
    address, security, recorder = served
    with open_channel(address, ClientSecurity(security.tls_ca, security.tls_cert, security.tls_key)) as channel:
        assert _calls(channel)[0](b"x", timeout=10) == b"x"
    assert recorder.seen[0][1] is None
