"""A worker stand-in for measuring the router: answers Generate/Score at once and announces itself.

    python benchmarks/_stub_worker.py STORE_ADDR PORT [TOKENS]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc  # noqa: E402


class Stub(worker_pb2_grpc.WorkerServicer):
    def __init__(self, tokens: int):
        self.tokens = tokens

    async def Generate(self, request, context):
        for i in range(self.tokens):
            yield worker_pb2.GenerateResponse(token_ids=[i], finished=i == self.tokens - 1,
                                              finish_reason="length" if i == self.tokens - 1 else "",
                                              adapter_key=request.adapter)

    async def Score(self, request, context):
        return worker_pb2.ScoreResponse(logprobs=[-1.0] * (len(request.token_ids) - 1), adapter_key=request.adapter)


async def main(store: str, port: int, tokens: int) -> None:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(Stub(tokens), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    registry = registry_pb2_grpc.RegistryStub(grpc.aio.insecure_channel(store))
    print("ready", flush=True)
    while True:
        await registry.Announce(registry_pb2.WorkerInfo(id=f"stub-{port}", address=f"127.0.0.1:{port}",
                                                        region="local", capacity=64, ttl_seconds=3.0))
        await asyncio.sleep(1.0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 8))
