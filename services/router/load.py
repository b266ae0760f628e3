"""The load a router cannot see itself: requests that direct (lookaside) callers stream to workers without it.

Pure: no I/O, no clock of its own (the caller passes ``now``). Used by ``membership.py`` and, unchanged, by
``benchmarks/routing_sim.py``, which measures the placement goals on this very estimate.

Two witnesses, both late:
- the worker's announcement (every ~0.25 s while its load changes, via the registry, read every ``poll_s``): its
  whole in-flight load at that moment. Less this router's own in-flight when the announcement arrived, it is the
  load of everyone else (direct callers, other routers);
- direct callers' reports (batched every ~0.25 s): requests begun and ended on each worker. Those reported after
  the latest announcement arrived are added to it (begun - ended).

Estimate of a worker's load not passing this router = max(0, announced others + begun - ended since). An
announcement resets the reports; reports older than ``hold_s`` are dropped too, so a caller that died before
reporting an end, or a worker whose announcements stopped changing, cannot skew the view for long.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Worker:
    others: float = 0.0                 # announced load, less this router's own in-flight on arrival
    since: float = -float("inf")        # when that announcement arrived
    events: deque = field(default_factory=deque)  # (time, +n begun | -n ended), oldest first
    net: int = 0                        # sum of events


class LoadEstimate:
    def __init__(self, hold_s: float = 5.0):
        self.hold_s = hold_s
        self._workers: dict[str, _Worker] = {}

    def _w(self, worker_id: str) -> _Worker:
        w = self._workers.get(worker_id)
        if w is None:
            w = self._workers[worker_id] = _Worker()
        return w

    def announced(self, worker_id: str, load: float, own_inflight: float, now: float) -> None:
        """A new announcement of ``worker_id`` arrived: ``load`` in flight there, ``own_inflight`` of them ours."""
        w = self._w(worker_id)
        w.others, w.since = max(0.0, load - own_inflight), now
        w.events.clear()
        w.net = 0

    def begun(self, worker_id: str, n: int, now: float) -> None:
        self._add(worker_id, n, now)

    def ended(self, worker_id: str, n: int, now: float) -> None:
        self._add(worker_id, -n, now)

    def _add(self, worker_id: str, n: int, now: float) -> None:
        if n:
            w = self._w(worker_id)
            w.events.append((now, n))
            w.net += n

    def load(self, worker_id: str, now: float) -> float:
        """Requests on ``worker_id`` that are not this router's own, as far as it knows at ``now``."""
        w = self._workers.get(worker_id)
        if w is None:
            return 0.0
        horizon = now - self.hold_s
        while w.events and w.events[0][0] < horizon:
            w.net -= w.events.popleft()[1]
        return max(0.0, w.others + w.net)

    def forget(self, keep: set[str]) -> None:
        """Drop every worker not in ``keep`` (gone from the registry)."""
        self._workers = {k: v for k, v in self._workers.items() if k in keep}
