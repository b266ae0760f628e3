"""The floor for any Python gRPC proxy: a pass-through Generate with no routing logic at all.

    python benchmarks/_bare_proxy.py PORT TARGET
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import grpc  # noqa: E402

from adapterfleet.v1 import worker_pb2_grpc  # noqa: E402


class Bare(worker_pb2_grpc.WorkerServicer):
    def __init__(self, target: str):
        self.target = target
        self.stub = None

    async def Generate(self, request, context):
        if self.stub is None:
            self.stub = worker_pb2_grpc.WorkerStub(grpc.aio.insecure_channel(self.target))
        async for msg in self.stub.Generate(request):
            yield msg


async def main(port: int, target: str) -> None:
    server = grpc.aio.server()
    worker_pb2_grpc.add_WorkerServicer_to_server(Bare(target), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
