"""Build a grpc.aio server (apart from running it): error translation, health, TLS, reflection, options."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from adapterfleet.common.grpc_errors import ErrorInterceptor
from adapterfleet.common.metrics import ServiceMetrics
from adapterfleet.common.observe import ObserveInterceptor
from adapterfleet.common.tls import ServerTLS, server_credentials

log = logging.getLogger("adapterfleet.server")


def create_server(
    address: str,
    register: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    metrics: ServiceMetrics,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    max_receive_bytes: int = MAX_MESSAGE_BYTES,
    tls: ServerTLS | None = None,
    reflection: bool = False,
) -> tuple[grpc.aio.Server, int, health.aio.HealthServicer]:
    """Returns (server, bound port, health servicer). Every call gets a request id and is counted in ``metrics``
    (outermost, so it sees the final status); the auth interceptor will sit in ``interceptors``, inside
    ErrorInterceptor, which translates whatever it raises. ``max_receive_bytes`` bounds one request message:
    gRPC refuses a bigger one (RESOURCE_EXHAUSTED) before decoding it. With ``tls`` the port speaks TLS only (mTLS
    when it names a CA), its certificate reloaded when the files change; without, plaintext. ``reflection``
    (off by default: it hands a stranger the whole API) serves grpc.reflection. Call ``await server.start()``."""
    options = list({**dict(CHANNEL_OPTIONS), "grpc.max_receive_message_length": max_receive_bytes}.items())
    server = grpc.aio.server(interceptors=[ObserveInterceptor(metrics), ErrorInterceptor(), *interceptors],
                             options=options)
    for add in register:
        add(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if reflection:
        from grpc_reflection.v1alpha import reflection as grpc_reflection  # noqa: PLC0415 - only when asked for

        grpc_reflection.enable_server_reflection(
            [*service_names, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME], server)
    if tls is None:
        log.warning("PLAINTEXT port on %s (--insecure): anyone who can reach it can read and forge calls; serve "
                    "with --tls-cert/--tls-key/--tls-ca (`adapterfleet auth init DIR` makes them)", address)
    port = server.add_secure_port(address, server_credentials(tls)) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    return server, port, health_servicer


async def mark_serving(health_servicer: health.aio.HealthServicer, service_names: Sequence[str]) -> None:
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def mark_draining(health_servicer: health.aio.HealthServicer, service_names: Sequence[str]) -> None:
    """Readiness goes down first, so that load balancers and probes stop sending before the listener closes."""
    for name in ("", *service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


def metrics_note(port: int) -> str:
    """The tail of a service's "serving on ..." log line."""
    return f", metrics on :{port}/metrics" if port else ""


async def drain_when_signalled(stop: Callable[..., Awaitable[None]], drain_s: float) -> None:
    """Wait for SIGINT or SIGTERM, then ``await stop(grace=drain_s)``: the service's drain."""
    await until_signalled()
    log.info("draining: in-flight calls get %.0f s", drain_s)
    await stop(grace=drain_s)


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM (the caller then drains and stops)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
