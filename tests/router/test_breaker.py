"""The per-worker circuit breaker and the membership's cap on ejections, driven with a clock of plain numbers."""

from __future__ import annotations

import asyncio

import pytest

from adapterfleet.router.breaker import Breaker, BreakerConfig, State
from adapterfleet.router.faults import Fault
from adapterfleet.router.membership import Membership
from adapterfleet.store.workers import WorkerRecord

CFG = BreakerConfig(consecutive=3, ratio=0.5, window_s=10.0, min_calls=10, open_s=2.0, max_open_s=5.0)


def fail_until_open(b: Breaker, now: float) -> None:
    while not b.failed(now):
        pass
    b.trip(now)


def test_consecutive_transport_failures_eject_then_one_probe_readmits():
    b = Breaker(CFG)
    assert not b.failed(0.0) and not b.failed(0.1)
    assert b.failed(0.2)  # the third in a row
    b.trip(0.2)
    assert b.state is State.OPEN and not b.available(1.0)
    assert b.available(2.3) and b.state is State.HALF_OPEN  # open_s later: probe
    b.begin()
    assert not b.available(2.3)  # one probe at a time
    b.answered(2.4)
    assert b.state is State.CLOSED and b.available(2.4) and b.consecutive == 0


def test_an_answer_resets_the_run_of_failures():
    b = Breaker(BreakerConfig(consecutive=3, min_calls=1000))  # the ratio out of play
    for t in range(20):
        assert not b.failed(t + 0.1)  # two failures, then an answer: never three in a row
        assert not b.failed(t + 0.2)
        b.answered(t + 0.3)
    assert b.state is State.CLOSED and b.trips == 0


def test_a_failure_ratio_over_the_window_ejects():
    b = Breaker(CFG)
    verdicts = []
    for i in range(12):  # fail, answer, fail, answer...: never 3 in a row, but half of 10+ calls fail
        now = i * 0.1
        if i % 2:
            b.answered(now)
        else:
            verdicts.append(b.failed(now))
    assert verdicts[-1] is True and not any(verdicts[:-1])


def test_old_calls_leave_the_window():
    b = Breaker(CFG)
    for i in range(10):
        b.answered(i * 0.1)
        assert not b.failed(i * 0.1)
        b.answered(i * 0.1)  # 1 failure in 3 calls: under the ratio
    assert not b.failed(30.0)  # the window holds only this one call now (< min_calls)


def test_a_failed_probe_doubles_the_ejection_up_to_the_cap():
    b = Breaker(CFG)
    fail_until_open(b, 0.0)
    now, lengths = 0.0, []
    for _ in range(4):
        opened = now
        while not b.available(now):
            now += 0.25
        lengths.append(now - opened)
        b.begin()
        assert b.failed(now)  # the probe failed
        b.trip(now)
    assert lengths == [2.0, 4.0, 5.0, 5.0]


def test_a_call_that_began_before_the_ejection_does_not_extend_it():
    b = Breaker(CFG)
    fail_until_open(b, 0.0)
    assert not b.failed(0.5)
    assert b.available(2.0)


def test_an_abandoned_probe_lets_another_probe_go():
    b = Breaker(CFG)
    fail_until_open(b, 0.0)
    assert b.available(2.0)
    b.begin()
    assert not b.available(2.1)
    b.abandon()
    assert b.available(2.1)


# --- the membership's view: ejection cap, draining, request faults ---------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def membership(n: int, clock: Clock, cfg: BreakerConfig = CFG) -> Membership:
    records = [WorkerRecord(id=f"w{i}", address=f"127.0.0.1:{7000 + i}") for i in range(n)]

    async def source():
        return records

    m = Membership(source, breaker=cfg, clock=clock)
    asyncio.run(m.refresh())
    return m


def healthy(m: Membership) -> set[str]:
    return {v.id for v in m.views() if v.healthy}


def fail(m: Membership, worker: str, fault: Fault, times: int = 3) -> None:
    for _ in range(times):
        m.begin(worker)
        m.outcome(worker, fault)
        m.end(worker)


@pytest.mark.parametrize(("workers", "ejectable"), [(1, 0), (2, 1), (3, 1), (4, 2), (5, 2)])
def test_at_most_half_the_workers_are_ejected_and_never_all(workers, ejectable):
    clock = Clock()
    m = membership(workers, clock)
    for i in range(workers):
        fail(m, f"w{i}", Fault.TRANSPORT, times=10)
    assert len(healthy(m)) == workers - ejectable
    assert healthy(m)


def test_request_faults_and_internal_never_eject_however_many():
    clock = Clock()
    m = membership(2, clock)
    for fault in (Fault.REQUEST, Fault.INTERNAL, Fault.REFUSED):
        fail(m, "w0", fault, times=100)
        fail(m, "w1", fault, times=100)
    assert healthy(m) == {"w0", "w1"}
    assert all(b.trips == 0 for _, b in m.breakers())


def test_a_draining_worker_is_ejected_at_once_and_probed_later():
    clock = Clock()
    m = membership(3, clock)
    fail(m, "w1", Fault.DRAINING, times=1)
    assert healthy(m) == {"w0", "w2"}
    clock.now = CFG.open_s
    assert healthy(m) == {"w0", "w1", "w2"}  # half open: the next request probes it
    m.begin("w1")
    assert healthy(m) == {"w0", "w2"}        # while the probe is out, nobody else goes there
    m.outcome("w1", None)
    m.end("w1")
    assert healthy(m) == {"w0", "w1", "w2"}
    [state] = [b.state for r, b in m.breakers() if r.id == "w1"]
    assert state is State.CLOSED


def test_a_worker_whose_record_lapsed_stays_while_it_answers():
    """After an outage of the store longer than the records' TTL the registry lists nobody for a moment: workers
    that answered this router lately stay; one that did not, or one that said it is draining, goes."""
    clock = Clock()
    records = [WorkerRecord(id=f"w{i}", address=f"127.0.0.1:{7000 + i}") for i in range(3)]
    listed = list(records)

    async def source():
        return listed

    m = Membership(source, breaker=CFG, keep_s=3.0, clock=clock)
    asyncio.run(m.refresh())
    m.outcome("w0", None)
    m.outcome("w1", None)
    listed[:] = [WorkerRecord(id="w1", address="127.0.0.1:7001", draining=True)]
    clock.now = 1.0
    asyncio.run(m.refresh())
    assert {v.id for v in m.views()} == {"w0"}  # w1 is draining, w2 never answered
    clock.now = 3.5
    asyncio.run(m.refresh())
    assert m.views() == []  # w0's last answer is older than keep_s
