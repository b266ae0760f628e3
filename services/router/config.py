"""Typed configuration of a router, built once at the entry point."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterfleet.common.auth_config import AuthConfig
from adapterfleet.common.metrics_config import MetricsConfig
from adapterfleet.common.security_config import INSECURE, ClientSecurity, ServerTLS
from adapterfleet.router.breaker import BreakerConfig
from adapterfleet.router.placement import PlacementConfig

PORT = 50071  # where `adapterfleet router serve` listens unless told otherwise (RouterConfig's 0: any free port)


@dataclass(frozen=True)
class RouterConfig:
    store: str
    host: str = "127.0.0.1"
    port: int = 0
    region: str = "local"
    redis_url: str | None = None      # read the registry straight from the store's Redis instead of via the store
    redis_prefix: str = "af:"
    poll_s: float = 0.5               # registry refresh period: a new worker gets traffic within ~poll_s + 1 s
    breaker: BreakerConfig = field(default_factory=BreakerConfig)  # when transport failures eject a worker
    stall_s: float | None = 60.0      # a worker silent this long (no answer, no next token) counts as failed
    stale_max_s: float = 300.0        # store unreachable: cached resolutions are served up to this stale
    max_attempts: int = 4             # workers tried per request before giving up
    # other regions' routers, in order: what no healthy worker of this region can take goes there, once
    fallback_routers: tuple[str, ...] = ()
    version_report_s: float = 1.0     # per-version figures go to the store this often, for rollout gates (0: off)
    route_ttl_s: float = 0.5          # how long a direct caller may reuse a Route answer (lookaside routing)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    drain_s: float = 10.0             # on SIGTERM: in-flight streams get this long to finish
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    tls: ServerTLS | None = None      # None: a plaintext port (the CLI allows that only with --insecure)
    security: ClientSecurity = INSECURE  # what this service presents when it calls other services (TLS, token)
    reflection: bool = False          # serve grpc.reflection (off: it lists the whole API to anyone)
    auth: AuthConfig = field(default_factory=AuthConfig)  # tokens verified here (no public key: auth off)
    http_port: int | None = None      # the OpenAI-compatible HTTP gateway (None: off; 0: any free port)
    http_host: str = "127.0.0.1"
    tokenizer: str | None = None      # the base model's directory: its tokenizer's chat template serves chat
