"""Where a service serves Prometheus /metrics: a config value only, so that configs (and the CLI that builds
them) do not import prometheus_client; :mod:`adapterfleet.common.metrics` does the serving."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricsConfig:
    port: int = 0          # 0: no /metrics endpoint
    host: str = "127.0.0.1"  # loopback unless told: counters name adapters and tenants
    adapter_labels: int = 256  # distinct adapter names labelled before the rest count as "_other"
