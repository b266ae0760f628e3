"""Per S3 endpoint: are large files read faster as parallel ranged GETs or as one GET? Measured, not assumed.

On S3 one connection carries roughly 100 MB/s and parallel 8-16 MB ranges go past it (AWS's guidance); servers
that copy the whole object for every ranged GET (moto, some S3 look-alikes) make each part cost a full read, and
there one GET is ~3x faster (``benchmarks/store_throughput.py``). A client cannot tell which from the URL, so it
times both: the first large file from an endpoint comes in ranges, the second in one GET, and later ones the way
that was faster (bytes per second, a moving average per way). Every ``reprobe_every``-th large file goes the other
way, so an endpoint that changes (load, a proxy in between) is noticed.
"""

from __future__ import annotations

import threading


class RangeChoice:
    def __init__(self, reprobe_every: int = 16):
        self.reprobe_every = reprobe_every
        self._lock = threading.Lock()
        self._rates: dict[str, dict[bool, float]] = {}  # endpoint -> {ranged: bytes per second, averaged}
        self._count: dict[str, int] = {}                 # large files timed per endpoint

    def ranged(self, endpoint: str) -> bool:
        """Whether the next large file from ``endpoint`` should come as parallel ranged GETs."""
        with self._lock:
            rates = self._rates.get(endpoint, {})
            if True not in rates or False not in rates:
                return True not in rates  # ranges first (the right way on S3), then one GET once
            faster = rates[True] >= rates[False]
            if self.reprobe_every > 0 and self._count[endpoint] % self.reprobe_every == 0:
                return not faster
            return faster

    def record(self, endpoint: str, ranged: bool, nbytes: int, seconds: float) -> None:
        """A large file of ``nbytes`` came whole (and verified) in ``seconds`` the ``ranged`` way."""
        rate = nbytes / max(seconds, 1e-6)
        with self._lock:
            rates = self._rates.setdefault(endpoint, {})
            old = rates.get(ranged)
            rates[ranged] = rate if old is None else (old + rate) / 2
            self._count[endpoint] = self._count.get(endpoint, 0) + 1

    def rates(self, endpoint: str) -> dict[bool, float]:
        """What was measured for ``endpoint`` (ranged -> bytes per second), for stats and tests."""
        with self._lock:
            return dict(self._rates.get(endpoint, {}))
