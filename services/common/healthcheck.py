"""`python -m adapterfleet.common.healthcheck HOST:PORT`: one grpc.health.v1 Check, for container healthchecks.

Exit status 0 when the server answers SERVING; 1 otherwise (NOT_SERVING while draining, an unknown service name,
nothing listening, the deadline passed), with the reason on stderr. The image then needs no separate
grpc_health_probe binary: docker-compose calls this, Kubernetes uses its built-in `grpc:` probes instead.
Against a TLS service give ``--tls-ca`` (and ``--tls-cert/--tls-key`` for mTLS), or ``ADAPTERFLEET_TLS_CA/_CERT/_KEY``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapterfleet.common.security import INSECURE, ClientSecurity, open_channel

SERVING = health_pb2.HealthCheckResponse.SERVING


def check(address: str, service: str = "", timeout: float = 3.0,
          security: ClientSecurity = INSECURE) -> tuple[bool, str]:
    """(serving?, the status name or the gRPC error). ``service`` "" asks about the whole server."""
    with open_channel(address, security) as channel:
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
    for name in ("ca", "cert", "key"):
        p.add_argument(f"--tls-{name}", help=f"PEM (default $ADAPTERFLEET_TLS_{name.upper()})")
    p.add_argument("--tls-server-name", help="the name to check the certificate for (default "
                                             "$ADAPTERFLEET_TLS_SERVER_NAME, else the address's host)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def path(name: str) -> Path | None:
        value = getattr(args, f"tls_{name}") or os.environ.get(f"ADAPTERFLEET_TLS_{name.upper()}")
        return Path(value) if value else None

    server_name = args.tls_server_name or os.environ.get("ADAPTERFLEET_TLS_SERVER_NAME") or None
    security = ClientSecurity(tls_ca=path("ca"), tls_cert=path("cert"), tls_key=path("key"), server_name=server_name)
    ok, status = check(args.address, args.service, args.timeout, security)
    target = f"{args.address} {args.service}".rstrip()
    print(f"{target}: {status}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
