"""What both ends of every adapterfleet gRPC channel agree on: message size limits and the request-id header.

Light on purpose (grpc is not even imported): clients and servers both import it, so it holds no server machinery.
"""

from __future__ import annotations

MAX_MESSAGE_BYTES = 64 << 20
# options for grpc.insecure_channel / grpc.aio.insecure_channel and grpc.aio.server alike
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
# metadata key carrying a call's id from the caller through the router into the worker's logs
REQUEST_ID_HEADER = "x-request-id"
# metadata key a router sets (to its region) on a call it hands to another region's router: never forwarded again
FORWARDED_HEADER = "x-adapterfleet-forwarded-from"
# metadata key carrying the caller's token ("Bearer <jwt>"), set by common.security, checked by the services
AUTHORIZATION_HEADER = "authorization"
