"""A circuit breaker per worker: transport failures eject a worker for a while, then one probe readmits it.

Only transport failures count (``faults.Fault.TRANSPORT``); any answer from the worker, an error included, is a
sign of life. A worker is ejected (OPEN) after ``consecutive`` transport failures in a row, or when at least
``ratio`` of its calls in the last ``window_s`` failed (once ``min_calls`` were made). After ``open_s`` it turns
HALF_OPEN: the next request goes to it as the probe (alone; the router retries it elsewhere if it fails). A probe
that is answered closes the breaker; one that fails opens it again for twice as long, up to ``max_open_s``.
How many workers may be ejected at once is the membership's call (``max_ejected``): see ``Membership``.

Pure: the caller passes the time, so tests drive it with numbers.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class BreakerConfig:
    consecutive: int = 3       # transport failures in a row that eject a worker
    ratio: float = 0.5         # ... or this share of its calls failing over the window
    window_s: float = 10.0
    min_calls: int = 20        # calls in the window before the ratio is judged
    open_s: float = 2.0        # the first ejection lasts this long; each failed probe doubles it
    max_open_s: float = 30.0
    max_ejected: float = 0.5   # at most this share of the workers (rounded down) ejected at once: never all


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(self, cfg: BreakerConfig):
        self.cfg = cfg
        self.state = State.CLOSED
        self.consecutive = 0
        self.trips = 0               # times ejected
        self.probing = False         # HALF_OPEN: the probe is in flight
        self.last_answer = float("-inf")  # when the worker last answered
        self._open_until = 0.0
        self._open_for = cfg.open_s
        self._window: deque[list[float]] = deque()  # [second, calls, failures], oldest first

    @property
    def ejected(self) -> bool:
        return self.state is not State.CLOSED

    def available(self, now: float) -> bool:
        """May a request go to this worker now? An OPEN breaker whose time is up turns HALF_OPEN here."""
        if self.state is State.OPEN:
            if now < self._open_until:
                return False
            self.state, self.probing = State.HALF_OPEN, False
        if self.state is State.HALF_OPEN:
            return not self.probing
        return True

    def begin(self) -> None:
        """A call is about to go to this worker (in HALF_OPEN, it is the probe)."""
        if self.state is State.HALF_OPEN:
            self.probing = True

    def abandon(self) -> None:
        """A call ended with no verdict (its caller went away): a HALF_OPEN worker may be probed again."""
        self.probing = False

    def answered(self, now: float) -> None:
        """The worker answered (a result or an error of its own): it is alive."""
        self._count(now, failed=False)
        self.consecutive = 0
        self.last_answer = now
        if self.state is not State.CLOSED:
            self.state, self.probing, self._open_for = State.CLOSED, False, self.cfg.open_s

    def failed(self, now: float) -> bool:
        """A transport failure. True when the breaker wants to open (the membership decides whether it may)."""
        self._count(now, failed=True)
        self.consecutive += 1
        if self.state is State.OPEN:  # a call that began before the ejection: it is ejected already
            return False
        if self.state is State.HALF_OPEN:
            return True
        calls, failures = self._totals(now)
        return (self.consecutive >= self.cfg.consecutive
                or (calls >= self.cfg.min_calls and failures >= self.cfg.ratio * calls))

    def trip(self, now: float) -> None:
        """Eject: OPEN for ``open_s``, doubled on each failed probe since the last close."""
        if self.state is State.HALF_OPEN:
            self._open_for = min(self._open_for * 2, self.cfg.max_open_s)
        self.state, self.probing = State.OPEN, False
        self._open_until = now + self._open_for
        self.trips += 1

    # --- the failure-ratio window: one bucket per second ----------------------------------------------------------
    def _count(self, now: float, failed: bool) -> None:
        second = float(int(now))
        if self._window and self._window[-1][0] == second:
            bucket = self._window[-1]
        else:
            bucket = [second, 0.0, 0.0]
            self._window.append(bucket)
        bucket[1] += 1
        bucket[2] += failed
        self._prune(now)

    def _totals(self, now: float) -> tuple[float, float]:
        self._prune(now)
        return sum(b[1] for b in self._window), sum(b[2] for b in self._window)

    def _prune(self, now: float) -> None:
        while self._window and self._window[0][0] <= now - self.cfg.window_s:
            self._window.popleft()
