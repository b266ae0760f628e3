"""A Prometheus scrape runs on the metrics server's thread while the event loop routes: it reads the router's state
and never changes it (it used to run placement's ``views()``, which prunes expectations and turns breakers, and
could raise KeyError in a request on the loop)."""

from __future__ import annotations

from adapterfleet.router.breaker import State
from adapterfleet.router.membership import Membership
from adapterfleet.router.metrics import _workers
from adapterfleet.store.workers import WorkerRecord


def test_a_scrape_reads_the_workers_without_changing_routing_state():
    now = [100.0]

    async def source():
        return []

    m = Membership(source, clock=lambda: now[0])
    m._records = {"w": WorkerRecord(id="w", address="10.0.0.1:50051")}
    breaker = m._breaker("w")
    breaker.trip(now[0])
    m.expect("w", "acme/a@sha256:" + "ab" * 32)
    m.begin("w")
    now[0] += 600  # the breaker's open time and the expectation have both run out: the loop's to act on
    pending = {w: dict(ks) for w, ks in m._pending.items()}
    families = {f.name: f for f in _workers(m)}
    assert breaker.state is State.OPEN and {w: dict(ks) for w, ks in m._pending.items()} == pending
    assert families["adapterfleet_router_workers"].samples[0].value == 1
    assert [(s.labels["worker"], s.value) for s in families["adapterfleet_router_worker_inflight"].samples] == \
        [("10.0.0.1:50051", 1)]
