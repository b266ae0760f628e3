"""Typed configuration of the store's rollout controller (a part of StoreConfig)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RolloutConfig:
    enabled: bool = True         # run the controller in this store process (any number of processes may)
    tick_s: float = 0.5          # how often the controller looks at its rollouts (commands, timers, gates)
    lease_s: float = 10.0        # a driver that stops renewing is replaced after this long
    stats_bucket_s: float = 1.0  # routers' per-version figures are kept in buckets this long
    stats_keep_s: float = 3600.0  # and expire after this long
    warm_settle_s: float = 1.5   # after workers report the new version resident: time for routers to see it
    warm_poll_s: float = 0.2     # how often the registry is read while waiting for residency
    command_wait_s: float = 12.0  # pause/resume/abort wait this long for the driver to carry them out
