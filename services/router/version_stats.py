"""Per-version traffic on a router: what rollout gates judge, and per-version Prometheus series.

Every routed request is one ``Probe``: the version key it resolved to, the time to its first answer, and how it
ended (an error class of :mod:`adapterfleet.store.rollout_figures` when it failed in a way that is the version's
fault). Counts go into a short window that a reporter sends to the store every ``report_s`` seconds (routers have
no Redis; the store keeps windows in Redis), and into running totals that the router's /metrics shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from adapterfleet.common.errors import AdapterFleetError
from adapterfleet.store.rollout_figures import Figures, error_class

log = logging.getLogger("adapterfleet.router")
MAX_SERIES = 256            # keys with their own Prometheus series; the rest are counted under "_other"
MAX_WINDOW_KEYS = 1024      # versions in one report (the store's limit)
OTHER = "_other"


class Probe:
    """One request's trace: set ``key`` once resolved; ``first()`` at its first answer; then ``ok()`` or
    ``failed(err)``. A request that never resolved a key counts nowhere."""

    __slots__ = ("_closed", "_first_ms", "_started", "_stats", "key")

    def __init__(self, stats: VersionStats):
        self._stats = stats
        self._started = time.monotonic()
        self._first_ms: float | None = None
        self.key = ""
        self._closed = False

    def first(self) -> None:
        if self._first_ms is None:
            self._first_ms = (time.monotonic() - self._started) * 1000.0

    def ok(self) -> None:
        self.first()
        self._close("")

    def failed(self, err: BaseException) -> None:
        code = err.code if isinstance(err, AdapterFleetError) else "INTERNAL"
        self._close(error_class(code))

    def cancelled(self) -> None:
        """The caller went away: counted as a request (its latency if it had an answer), not as an error."""
        self._close("")

    def _close(self, error: str) -> None:
        if self._closed or not self.key or "@sha256:" not in self.key:
            return
        self._closed = True
        self._stats.observe(self.key, error, self._first_ms)


class VersionStats:
    def __init__(self) -> None:
        self.window: dict[str, Figures] = {}
        self.totals: dict[str, Figures] = {}
        self.latency_sum_s: dict[str, float] = {}  # per series in totals: the histogram's sum
        self.reports = self.report_failures = 0

    def probe(self) -> Probe:
        return Probe(self)

    def observe(self, key: str, error: str, ms: float | None) -> None:
        w = self.window.get(key)
        if w is None and len(self.window) < MAX_WINDOW_KEYS:
            w = self.window[key] = Figures()
        if w is not None:
            w.observe(error, ms)
        series = key if key in self.totals or len(self.totals) < MAX_SERIES else OTHER
        self.totals.setdefault(series, Figures()).observe(error, ms)
        if ms is not None:
            self.latency_sum_s[series] = self.latency_sum_s.get(series, 0.0) + ms / 1000.0

    def take(self) -> dict[str, Figures]:
        """The window so far, and a fresh one."""
        out, self.window = self.window, {}
        return out

    def put_back(self, figures: dict[str, Figures]) -> None:
        """A report that failed: its counts join the next window (bounded like any window)."""
        for key, f in figures.items():
            w = self.window.get(key)
            if w is None and len(self.window) < MAX_WINDOW_KEYS:
                w = self.window[key] = Figures()
            if w is not None:
                w.add(f)


class Reporter:
    """Sends the window to the store every ``every_s`` seconds (nothing when there was no traffic)."""

    def __init__(self, stats: VersionStats, send: Callable[[dict[str, Figures]], Awaitable[object]],
                 every_s: float):
        self._stats = stats
        self._send = send
        self._every = every_s
        self._task: asyncio.Task | None = None
        self._flushing: asyncio.Future | None = None  # the loop's report on its way

    def start(self) -> None:
        if self._every > 0 and self._task is None:
            self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._flushing is not None:  # a report on its way ends first: cancelled, its counts could be lost
            await asyncio.wait((self._flushing,))  # (taken before the RPC ended) or sent twice (put back after it)
        await self.flush()

    async def flush(self) -> None:
        window = self._stats.take()
        if not window:
            return
        try:
            await self._send(window)
            self._stats.reports += 1
        except Exception as err:  # noqa: BLE001 - the store is down: keep the counts for the next report
            self._stats.report_failures += 1
            self._stats.put_back(window)
            log.info("per-version figures not reported to the store (kept for the next report): %s", err)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            self._flushing = asyncio.ensure_future(self.flush())
            await asyncio.shield(self._flushing)


def version_series(stats: VersionStats):
    """Prometheus families per version key since start: requests, errors by class, time-to-first-answer."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily  # noqa: PLC0415 - serving extra

    from adapterfleet.store.rollout_figures import BUCKETS_MS  # noqa: PLC0415

    requests = CounterMetricFamily("adapterfleet_router_version_requests", "requests routed per adapter version "
                                   f"(the first {MAX_SERIES} versions by key, then {OTHER})", labels=["key"])
    errors = CounterMetricFamily("adapterfleet_router_version_errors", "failed requests that were the version's "
                                 "fault, by class (internal, failed_precondition, data_loss, deadline_exceeded)",
                                 labels=["key", "class"])
    latency = HistogramMetricFamily("adapterfleet_router_version_first_answer_seconds", "time to a request's first "
                                    "answer (Score's answer, Generate's first message) per adapter version",
                                    labels=["key"])
    for key, f in sorted(stats.totals.items()):
        requests.add_metric([key], f.requests)
        for cls, n in sorted(f.errors.items()):
            errors.add_metric([key, cls], n)
        cumulative, buckets = 0, []
        for bound, n in zip([*(b / 1000 for b in BUCKETS_MS), float("inf")], f.latency, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        latency.add_metric([key], buckets, sum_value=stats.latency_sum_s.get(key, 0.0))
    yield from (requests, errors, latency)
