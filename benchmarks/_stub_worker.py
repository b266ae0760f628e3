"""A worker stand-in for measuring the router: answers Generate/Score at once and announces itself.

LoadAdapter, too, succeeds at once, and the adapter is announced as held from then on, as a worker announces it: a
router that wants a copy of a hot adapter asks once. (Refusing it, the stand-in had the router ask again every few
seconds, each time with a warning in its log, mostly in the rounds whose requests made the adapter hot: proxied and
lookaside ones, never direct ones.)

    python benchmarks/_stub_worker.py STORE_ADDR PORT [TOKENS [SECURITY_DIR]]

With SECURITY_DIR (what `adapterfleet auth init` writes) it serves mTLS, checks tokens as a worker does, and
announces over mTLS with a worker token of its own.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.v1 import common_pb2, registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402


class Stub(worker_pb2_grpc.WorkerServicer):
    def __init__(self, tokens: int):
        self.tokens = tokens
        self.held: list[str] = []

    async def LoadAdapter(self, request, context):
        if request.ref not in self.held:
            self.held.append(request.ref)
        return worker_pb2.AdapterState(key=request.ref, tier=common_pb2.TIER_ACTIVE)

    async def Generate(self, request, context):
        for i in range(len(request.resume_ids), self.tokens):  # a resumed stream continues, like a worker's
            yield worker_pb2.GenerateResponse(token_ids=[i], finished=i == self.tokens - 1,
                                              finish_reason="length" if i == self.tokens - 1 else "",
                                              adapter_key=request.adapter)

    async def Score(self, request, context):
        return worker_pb2.ScoreResponse(logprobs=[-1.0] * (len(request.token_ids) - 1), adapter_key=request.adapter)


async def main(store: str, port: int, tokens: int, security_dir: str = "") -> None:
    if not security_dir:
        server = grpc.aio.server()
        server.add_insecure_port(f"127.0.0.1:{port}")
        channel = grpc.aio.insecure_channel(store)
    else:
        from adapterfleet.cli.auth_cmd import Material, mint
        from adapterfleet.common.auth import make_authenticator, server_interceptors
        from adapterfleet.common.auth_config import AuthConfig
        from adapterfleet.common.security import ClientSecurity, open_aio_channel
        from adapterfleet.common.tls import ServerTLS, server_credentials

        m = Material(Path(security_dir))
        auth = make_authenticator(AuthConfig(public_keys=(m.issuer_public_key,)))
        server = grpc.aio.server(interceptors=server_interceptors(auth))
        server.add_secure_port(f"127.0.0.1:{port}", server_credentials(ServerTLS(m.cert, m.key, m.ca)))
        token = mint(m.issuer_key, ["*"], ["read", "worker"], 86400, worker_id=f"stub-{port}").token
        channel = open_aio_channel(store, ClientSecurity(m.ca, m.cert, m.key, token))
    stub = Stub(tokens)
    worker_pb2_grpc.add_WorkerServicer_to_server(stub, server)
    await server.start()
    registry = registry_pb2_grpc.RegistryStub(channel)
    print("ready", flush=True)
    while True:
        await registry.Announce(registry_pb2.WorkerInfo(
            id=f"stub-{port}", address=f"127.0.0.1:{port}", region="local", capacity=64, ttl_seconds=3.0,
            adapters=[registry_pb2.ResidentAdapter(key=k, tier=common_pb2.TIER_ACTIVE) for k in stub.held]))
        await asyncio.sleep(1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8,
                     sys.argv[4] if len(sys.argv) > 4 else ""))
