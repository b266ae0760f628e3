"""`python -m adapterfleet.common.healthcheck HOST:PORT`: one grpc.health.v1 Check, for container healthchecks.

Exit status 0 when the server answers SERVING; 1 otherwise (NOT_SERVING while draining, an unknown service name,
nothing listening, the deadline passed), with the reason on stderr. The image then needs no separate
grpc_health_probe binary: docker-compose calls this, Kubernetes uses its built-in `grpc:` probes instead.
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(address: str, service: str = "", timeout: float = 3.0) -> tuple[bool, str]:
    """(serving?, the status name or the gRPC error). ``service`` "" asks about the whole server."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return False, f"{err.code().name}: {err.details()}"
    return reply.status == SERVING, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapterfleet.common.healthcheck",
                                description="Exit 0 when a gRPC server's health service answers SERVING.")
    p.add_argument("address", help="HOST:PORT of the server")
    p.add_argument("--service", default="", help="a service name; default: the whole server")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ok, status = check(args.address, args.service, args.timeout)
    target = f"{args.address} {args.service}".rstrip()
    print(f"{target}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
