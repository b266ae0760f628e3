"""What both ends of every adapterfleet gRPC channel agree on: message size limits, keepalive and the request-id header.

Light on purpose (grpc is not even imported): clients and servers both import it, so it holds no server machinery.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 64 << 20
# HTTP/2 keepalive while calls are open. A peer that vanished without a reset (a host that died, a network that drops
# everything) is found by a ping that gets no answer: the connection closes and its calls fail UNAVAILABLE (a stream
# resumes elsewhere). Without it such a call waited for ever: a worker's fetch, and every request for its adapter.
KEEPALIVE_S = 20.0          # a ping after this long without a frame from the peer...
KEEPALIVE_TIMEOUT_S = 10.0  # ...that must be answered within this
# Servers accept a peer's pings this often when no data flows. gRPC's default is 5 minutes, after which a server
# answers more frequent pings with GOAWAY ("too_many_pings"): a long silent call (a cold load, a slow score) failed.
PING_PERMIT_S = 1.0


def keepalive_options(every_s: float = KEEPALIVE_S, timeout_s: float = KEEPALIVE_TIMEOUT_S) -> list[tuple[str, int]]:
    """Keepalive for one end of a channel: pings only while calls are open, as many as it takes (gRPC stops after
    two without data unless told otherwise, so a call silent for long would not be watched)."""
    every_ms, timeout_ms = int(every_s * 1000), int(timeout_s * 1000)
    return [("grpc.keepalive_time_ms", every_ms), ("grpc.keepalive_timeout_ms", timeout_ms),
            ("grpc.keepalive_permit_without_calls", 0), ("grpc.http2.max_pings_without_data", 0),
            ("grpc.http2.min_time_between_pings_ms", every_ms),  # its default, 5 minutes, would space them out
            # any ping unanswered this long closes the connection: a flow-control (BDP) ping in flight holds the
            # keepalive ping back, and its own timeout is a minute by default
            ("grpc.http2.ping_timeout_ms", timeout_ms)]


# options for grpc.insecure_channel / grpc.aio.insecure_channel and grpc.aio.server alike
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    *keepalive_options(),
    ("grpc.http2.min_ping_interval_without_data_ms", int(PING_PERMIT_S * 1000)),  # a server's side
]
# metadata key carrying a call's id from the caller through the router into the worker's logs
REQUEST_ID_HEADER = "x-request-id"
# metadata key a router sets (to its region) on a call it hands to another region's router: never forwarded again
FORWARDED_HEADER = "x-adapterfleet-forwarded-from"
# metadata key carrying the caller's token ("Bearer <jwt>"), set by common.security, checked by the services
AUTHORIZATION_HEADER = "authorization"
