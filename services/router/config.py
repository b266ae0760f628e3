"""Typed configuration of a router, built once at the entry point."""

from __future__ import annotations

from dataclasses import dataclass, field

from adapterfleet.common.metrics_config import MetricsConfig
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
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    drain_s: float = 10.0             # on SIGTERM: in-flight streams get this long to finish
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    http_port: int | None = None      # the OpenAI-compatible HTTP gateway (None: off; 0: any free port)
    http_host: str = "127.0.0.1"
    tokenizer: str | None = None      # the base model's directory: its tokenizer's chat template serves chat
