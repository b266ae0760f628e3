"""Typed settings of a service's auth (no imports beyond the standard library: configs load them everywhere)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TenantLimits:
    """Per-tenant limits of one service (services/common/limits.py); each 0 means unlimited."""

    requests_per_s: float = 0.0   # calls per second per tenant, refilled continuously
    burst: float = 0.0            # the bucket's size (0: max(1, requests_per_s))
    max_streams: int = 0          # streaming calls (Generate, Fetch, Watch, Push) open at once per tenant
    max_push_bytes: int = 0       # bytes of one push (below the store's own limits)
    pushes_per_min: float = 0.0   # pushes per minute per tenant

    def __post_init__(self) -> None:
        for name in ("requests_per_s", "burst", "max_streams", "max_push_bytes", "pushes_per_min"):
            if getattr(self, name) < 0:
                raise ValueError(f"tenant limit {name} is {getattr(self, name)}; use 0 (unlimited) or more")


@dataclass(frozen=True)
class AuthConfig:
    """A service's side of auth: the issuer public keys it trusts (several while keys rotate; none: auth off),
    the clock skew tolerated on expiry, and the per-tenant limits (applied to authenticated tenants)."""

    public_keys: tuple[Path, ...] = ()
    leeway_s: float = 30.0
    limits: TenantLimits = field(default_factory=TenantLimits)

    @property
    def enabled(self) -> bool:
        return bool(self.public_keys)
