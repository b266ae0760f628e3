"""Per-version traffic figures: the one home of what routers count and rollout gates judge.

Routers count, per adapter version key, requests, the errors that are the version's fault (by class) and a latency
histogram over fixed buckets; they send a window of these to the store every few seconds, and the store keeps them
in Redis per region in short time buckets. A rollout's gates add up the buckets of a window for the old and the
new version and compare them. Both sides import this module (a wire contract, no server code).

Error classes (a failed request counts against its version only for these; everything else is the caller's or the
fleet's fault, not the version's):
    internal             INTERNAL: the worker failed on it
    failed_precondition  FAILED_PRECONDITION: at load (incompatible with the base model, refused signature, ...)
    data_loss            DATA_LOSS: its bytes do not hash to its manifest
    deadline_exceeded    DEADLINE_EXCEEDED while a worker was running it
Latency is the time to the first answer: a Score's answer, a Generate's first message (a cold load shows there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

# Upper bounds of the latency buckets, milliseconds; one more bucket (+Inf) follows the last.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 10000, 30000, 60000)
N_BUCKETS = len(BUCKETS_MS) + 1

ERROR_CLASSES = {"INTERNAL": "internal", "FAILED_PRECONDITION": "failed_precondition", "DATA_LOSS": "data_loss",
                 "DEADLINE_EXCEEDED": "deadline_exceeded"}


def error_class(code: str) -> str:
    """A gRPC status code name -> the error class it counts as against the version, or "" (not its fault)."""
    return ERROR_CLASSES.get(code, "")


def bucket_of(ms: float) -> int:
    """The index of the latency bucket ``ms`` falls in (the last one is +Inf)."""
    for i, bound in enumerate(BUCKETS_MS):
        if ms <= bound:
            return i
    return len(BUCKETS_MS)


@dataclass
class Figures:
    """One version's counts over some time: requests, errors by class, latency histogram (N_BUCKETS counts)."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)

    def observe(self, error: str, ms: float | None) -> None:
        """Count one request: ``error`` is its error class ("" when it is not the version's fault), ``ms`` the
        latency to its first answer (None when it never answered)."""
        self.requests += 1
        if error:
            self.errors[error] = self.errors.get(error, 0) + 1
        if ms is not None:
            self.latency[bucket_of(ms)] += 1

    def add(self, other: Figures) -> None:
        self.requests += other.requests
        for k, n in other.errors.items():
            self.errors[k] = self.errors.get(k, 0) + n
        for i, n in enumerate(other.latency[:N_BUCKETS]):
            self.latency[i] += n

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.requests if self.requests else 0.0

    def quantile_ms(self, q: float) -> float:
        """The ``q`` quantile of latency from the histogram (linear inside the bucket it falls in); 0 with no data.
        A quantile in the +Inf bucket is reported as twice the last bound."""
        total = sum(self.latency)
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for i, n in enumerate(self.latency):
            if n and seen + n >= rank:
                lower = BUCKETS_MS[i - 1] if i > 0 else 0.0
                upper = BUCKETS_MS[i] if i < len(BUCKETS_MS) else 2.0 * BUCKETS_MS[-1]
                return lower + (upper - lower) * max(0.0, min(1.0, (rank - seen) / n))
            seen += n
        return 2.0 * BUCKETS_MS[-1]

    @property
    def p99_ms(self) -> float:
        return self.quantile_ms(0.99)

    def to_fields(self) -> dict[str, int]:
        """The Redis hash fields this adds to a time bucket (HINCRBY each): ``r``, ``e:<class>``, ``l:<i>``."""
        out = {"r": self.requests}
        out.update({f"e:{k}": n for k, n in self.errors.items() if n})
        out.update({f"l:{i}": n for i, n in enumerate(self.latency) if n})
        return out

    @classmethod
    def from_fields(cls, fields: Mapping[str, int | str | bytes]) -> Figures:
        f = cls()
        for raw_key, raw in fields.items():
            k = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            n = int(raw)
            if k == "r":
                f.requests += n
            elif k.startswith("e:"):
                f.errors[k[2:]] = f.errors.get(k[2:], 0) + n
            elif k.startswith("l:") and k[2:].isdigit() and int(k[2:]) < N_BUCKETS:
                f.latency[int(k[2:])] += n
        return f


def total(figures: Iterable[Figures]) -> Figures:
    out = Figures()
    for f in figures:
        out.add(f)
    return out


def finite(x: float) -> float:
    return x if math.isfinite(x) else 0.0
