"""The pure parts: per-version figures (histogram, p99, Redis fields), the gates, steps and the record's JSON."""

from __future__ import annotations

import pytest

from adapterfleet.common.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound
from adapterfleet.router.version_stats import VersionStats
from adapterfleet.store.rollout_figures import BUCKETS_MS, Figures, error_class
from adapterfleet.store.rollout_gates import FAIL, PASS, WAIT, judge
from adapterfleet.store.rollout_record import Rollout, check_steps, step_targets


def figures(requests: int, errors: int = 0, ms: float = 10.0, cls: str = "internal") -> Figures:
    f = Figures()
    for i in range(requests):
        f.observe(cls if i < errors else "", ms)
    return f


def rollout(**kw) -> Rollout:
    return Rollout(name="acme/x", alias="prod", from_version=3, to_version=4, from_key="acme/x@sha256:a",
                   to_key="acme/x@sha256:b", **kw)


def test_error_classes_are_the_versions_fault_only():
    assert [error_class(c) for c in ("INTERNAL", "FAILED_PRECONDITION", "DATA_LOSS", "DEADLINE_EXCEEDED")] == [
        "internal", "failed_precondition", "data_loss", "deadline_exceeded"]
    assert error_class("INVALID_ARGUMENT") == error_class("NOT_FOUND") == error_class("UNAVAILABLE") == ""


def test_p99_from_the_histogram_and_redis_fields_round_trip():
    f = Figures()
    for _ in range(98):
        f.observe("", 4.0)   # bucket (2, 5]
    for _ in range(2):
        f.observe("", 800.0)  # bucket (750, 1000]
    assert 750 <= f.p99_ms <= 1000 and f.quantile_ms(0.5) <= 5
    back = Figures.from_fields({k.encode(): str(v).encode() for k, v in f.to_fields().items()})
    assert (back.requests, back.latency, back.errors) == (f.requests, f.latency, f.errors)
    assert Figures().p99_ms == 0.0 and len(f.latency) == len(BUCKETS_MS) + 1


def test_gates_wait_then_judge_the_new_version_against_the_old():
    r = rollout(min_requests=50, max_error_rate=0.01)
    assert judge(r, figures(500), figures(49, errors=49)).outcome == WAIT  # not enough traffic yet
    bad = judge(r, figures(500), figures(50, errors=5, cls="failed_precondition"))
    assert bad.outcome == FAIL and "failed_precondition 5" in bad.text and "10.0%" in bad.text
    # the old version failing as often: not the new version's fault
    assert judge(r, figures(500, errors=50), figures(100, errors=10)).outcome == PASS
    assert judge(r, figures(500), figures(100, errors=1)).outcome == PASS  # 1% is within +0.01
    slow = judge(rollout(min_requests=10, max_p99_ms=100), figures(100, ms=20), figures(100, ms=900))
    assert slow.outcome == FAIL and "p99" in slow.text
    assert judge(rollout(min_requests=0), Figures(), Figures()).outcome == PASS  # --min-requests 0: no minimum


def test_steps_and_their_weights():
    assert check_steps(()) == (5, 25, 50, 100)
    assert step_targets(3, 4, 25) == ((3, 75), (4, 25)) and step_targets(3, 4, 100) == ((4, 100),)
    for bad in ((50, 25, 100), (5, 50), (0, 100), (5, 5, 100)):
        with pytest.raises(InvalidArgument):
            check_steps(bad)


def test_the_record_round_trips_through_json():
    r = rollout(steps=(10, 100), regions=("a", "b"), region_index=1, weights="3:90,4:10").noted(5.0, "step", "x")
    back = Rollout.from_json(r.to_json())
    assert back == r and back.region == "b" and back.targets == ((3, 90), (4, 10))


def test_router_probes_count_per_version_with_classes():
    stats = VersionStats()
    for err in (None, FailedPrecondition("no fit"), DeadlineExceeded("slow"), NotFound("caller's typo")):
        p = stats.probe()
        p.key = "acme/x@sha256:" + "b" * 64
        if err is None:
            p.ok()
        else:
            p.failed(err)
    p = stats.probe()  # never resolved: counted nowhere
    p.ok()
    [(key, f)] = stats.take().items()
    assert f.requests == 4 and f.errors == {"failed_precondition": 1, "deadline_exceeded": 1}
    assert stats.take() == {} and stats.totals[key].requests == 4
