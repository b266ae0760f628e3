"""Rollout gates: the new version's real traffic against the old one's over the same window (pure; no I/O).

    error gate    the new version's error rate (errors that are its fault, rollout_figures.ERROR_CLASSES) may exceed
                  the old one's by at most max_error_rate: 0.01 -> at most one point above the old version
    latency gate  with max_p99_ms: the new version's p99 (time to first answer) at most that many milliseconds
Nothing is judged before the new version has min_requests requests in the window; a failing gate is acted on as
soon as that many are in (no need to wait for the end of the step), a passing one only at the end of the step.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapterfleet.store.rollout_figures import Figures
from adapterfleet.store.rollout_record import GateFigures, Gates, Rollout

PASS, FAIL, WAIT = "pass", "fail", "waiting"


@dataclass(frozen=True)
class Verdict:
    outcome: str   # PASS | FAIL | WAIT
    text: str      # what status shows: "pass", "fail: ...", "waiting: ..."


def figures_of(version: int, f: Figures) -> GateFigures:
    return GateFigures(version=version, requests=f.requests, errors=f.error_count, error_rate=round(f.error_rate, 6),
                       p99_ms=round(f.p99_ms, 3), error_classes=dict(sorted(f.errors.items())))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def judge(r: Rollout, old: Figures, new: Figures) -> Verdict:
    if r.min_requests == 0 and new.requests == 0:
        return Verdict(PASS, f"pass: no requests to v{r.to_version} in the window (--min-requests 0)")
    if new.requests < max(1, r.min_requests):
        return Verdict(WAIT, f"waiting: v{r.to_version} has {new.requests} of the {r.min_requests} requests a "
                             "window needs before it is judged")
    excess = new.error_rate - old.error_rate
    if excess > r.max_error_rate:
        classes = ", ".join(f"{k} {n}" for k, n in sorted(new.errors.items()))
        return Verdict(FAIL, f"fail: error rate of v{r.to_version} is {_pct(new.error_rate)} ({new.error_count} of "
                             f"{new.requests} requests: {classes}), v{r.from_version} has {_pct(old.error_rate)}; "
                             f"more than --max-error-rate {r.max_error_rate:g} above it")
    if r.max_p99_ms > 0 and new.p99_ms > r.max_p99_ms:
        return Verdict(FAIL, f"fail: p99 latency of v{r.to_version} is {new.p99_ms:.0f} ms over {new.requests} "
                             f"requests (v{r.from_version}: {old.p99_ms:.0f} ms), above --max-p99-ms "
                             f"{r.max_p99_ms:g}")
    return Verdict(PASS, f"pass: v{r.to_version} {_pct(new.error_rate)} errors, p99 {new.p99_ms:.0f} ms over "
                         f"{new.requests} requests; v{r.from_version} {_pct(old.error_rate)}, p99 "
                         f"{old.p99_ms:.0f} ms over {old.requests}")


def gates_of(r: Rollout, old: Figures, new: Figures, verdict: Verdict, window_s: float, now: float) -> Gates:
    return Gates(old=figures_of(r.from_version, old), new=figures_of(r.to_version, new), window_s=round(window_s, 3),
                 verdict=verdict.text, judged_at=now, region=r.region)
