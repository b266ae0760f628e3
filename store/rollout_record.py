"""A rollout as it is kept (JSON in the store's Redis) and shown (``RolloutStatus``): the one home of its fields,
states, defaults and the weights of each step. Shared by the store's controller, the SDK and the CLI.

    running -> paused -> running            (pause / resume)
    running | paused -> done                 (the last step reached: the alias is the new version only)
    running | paused -> rolled_back          (a gate failed, or the new version failed to load while warming)
    running | paused -> aborted              (abort: back to the old version; or someone moved the alias by hand)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from adapterfleet.common.errors import InvalidArgument
from adapterfleet.store.targets import Targets, decode, encode
from adapterfleet.v1 import common_pb2, rollout_pb2

RUNNING, PAUSED, DONE, ROLLED_BACK, ABORTED = "running", "paused", "done", "rolled_back", "aborted"
STATES = (RUNNING, PAUSED, DONE, ROLLED_BACK, ABORTED)
ACTIVE_STATES = (RUNNING, PAUSED)
COMMANDS = ("pause", "resume", "abort")

DEFAULT_STEPS = (5, 25, 50, 100)
DEFAULT_INTERVAL_S = 60.0
DEFAULT_MAX_ERROR_RATE = 0.01
DEFAULT_MIN_REQUESTS = 100
DEFAULT_WARM_TIMEOUT_S = 120.0
MAX_STEPS = 20
MAX_REGIONS = 16
MAX_HISTORY = 64


def rollout_id(name: str, alias: str) -> str:
    return f"{name}@{alias}"


def override_alias(alias: str, region: str) -> str:
    """The regional override of ``alias`` a rollout by region moves (no user alias can contain '~'); the store's
    Resolve uses it for callers in ``region`` while it exists."""
    return f"{alias}~{region}"


def step_targets(old: int, new: int, weight: int) -> Targets:
    """The alias at a step: the new version at ``weight`` percent, the old one at the rest (just the new one at 100,
    just the old one at 0)."""
    if weight >= 100:
        return ((new, 100),)
    if weight <= 0:
        return ((old, 100),)
    return tuple(sorted(((old, 100 - weight), (new, weight))))


def check_steps(steps: tuple[int, ...]) -> tuple[int, ...]:
    if not steps:
        return DEFAULT_STEPS
    if len(steps) > MAX_STEPS:
        raise InvalidArgument(f"a rollout has at most {MAX_STEPS} steps, not {len(steps)}")
    if any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
        raise InvalidArgument(f"steps {','.join(map(str, steps))} must be increasing percentages in 1..100, "
                              "e.g. --steps 5,25,50,100")
    if steps[-1] != 100:
        raise InvalidArgument(f"the last step must be 100 (all traffic on the new version), not {steps[-1]}; "
                              f"e.g. --steps {','.join(map(str, steps))},100")
    return tuple(steps)


@dataclass(frozen=True)
class GateFigures:
    version: int = 0
    requests: int = 0
    errors: int = 0
    error_rate: float = 0.0
    p99_ms: float = 0.0
    error_classes: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Gates:
    old: GateFigures = GateFigures()
    new: GateFigures = GateFigures()
    window_s: float = 0.0
    verdict: str = ""
    judged_at: float = 0.0
    region: str = ""


@dataclass(frozen=True)
class Rollout:
    name: str
    alias: str
    from_version: int
    to_version: int
    from_key: str                      # name@sha256:... of each version: what routers report figures under
    to_key: str
    steps: tuple[int, ...] = DEFAULT_STEPS
    interval_s: float = DEFAULT_INTERVAL_S
    max_error_rate: float = DEFAULT_MAX_ERROR_RATE
    max_p99_ms: float = 0.0            # 0: no latency gate
    min_requests: int = DEFAULT_MIN_REQUESTS
    regions: tuple[str, ...] = ()
    warm: bool = True
    warm_timeout_s: float = DEFAULT_WARM_TIMEOUT_S
    state: str = RUNNING
    step: int = -1                     # index into steps; -1: before the first
    region_index: int = -1             # index into regions being promoted; -1 with no regions
    weights: str = ""                  # the alias's targets as the rollout last set them ("3:75,4:25")
    region_weights: dict[str, str] = field(default_factory=dict)  # with regions: each region's override
    pending: dict[str, Any] | None = None  # an alias move begun and not yet recorded: {"targets", "step", ...}
    reason: str = ""
    gates: Gates = Gates()
    warm_note: str = ""
    owner: str = ""                    # the store process that last drove it
    created_at: float = 0.0
    updated_at: float = 0.0
    step_started_at: float = 0.0
    history: tuple[dict[str, Any], ...] = ()

    @property
    def id(self) -> str:
        return rollout_id(self.name, self.alias)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def targets(self) -> Targets:
        return decode(self.weights)

    @property
    def region(self) -> str:
        """The region being promoted ("" without regions)."""
        return self.regions[self.region_index] if self.regions and 0 <= self.region_index < len(self.regions) else ""

    def noted(self, now: float, kind: str, detail: str, **changes: Any) -> Rollout:
        """This rollout with ``changes`` and one more history entry."""
        history = (*self.history, {"time": now, "kind": kind, "detail": detail})[-MAX_HISTORY:]
        return replace(self, updated_at=now, history=history, **changes)

    # --- JSON (Redis) -----------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Rollout:
        d = json.loads(raw)
        d["steps"] = tuple(d["steps"])
        d["regions"] = tuple(d.get("regions", ()))
        d["history"] = tuple(d.get("history", ()))
        g = d.get("gates") or {}
        d["gates"] = Gates(old=GateFigures(**g.get("old", {})), new=GateFigures(**g.get("new", {})),
                           **{k: v for k, v in g.items() if k not in ("old", "new")})
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def event_detail(self, kind: str, detail: str) -> str:
        """The ``detail`` of the ROLLOUT_CHANGED event this change appends to the store's stream."""
        weight = dict(self.targets).get(self.to_version, 0) if self.weights else 0
        return json.dumps({"kind": kind, "state": self.state, "step": self.step, "weight": weight,
                           "from": self.from_version, "to": self.to_version, "region": self.region,
                           "detail": detail}, sort_keys=True)


# --- the wire ---------------------------------------------------------------------------------------------------------
def _figures_to_pb(f: GateFigures) -> rollout_pb2.VersionFigures:
    return rollout_pb2.VersionFigures(version=f.version, requests=f.requests, errors=f.errors,
                                      error_rate=f.error_rate, p99_ms=f.p99_ms, error_classes=f.error_classes)


def _figures_from_pb(pb: rollout_pb2.VersionFigures) -> GateFigures:
    return GateFigures(pb.version, pb.requests, pb.errors, pb.error_rate, pb.p99_ms, dict(pb.error_classes))


def to_pb(r: Rollout, pending_command: str = "", owner: str | None = None) -> rollout_pb2.RolloutStatus:
    g = r.gates
    return rollout_pb2.RolloutStatus(
        name=r.name, alias=r.alias, from_version=r.from_version, to_version=r.to_version, state=r.state,
        step=r.step, steps=list(r.steps),
        weights=[common_pb2.AliasTarget(version=v, weight=w) for v, w in r.targets],
        gates=rollout_pb2.GateReport(old=_figures_to_pb(g.old), new=_figures_to_pb(g.new), window_seconds=g.window_s,
                                     verdict=g.verdict, judged_at=g.judged_at, region=g.region),
        reason=r.reason, interval_seconds=r.interval_s, max_error_rate=r.max_error_rate, max_p99_ms=r.max_p99_ms,
        min_requests=r.min_requests, regions=list(r.regions), region_index=r.region_index, warm=r.warm,
        warm_note=r.warm_note, owner=r.owner if owner is None else owner, created_at=r.created_at,
        updated_at=r.updated_at, step_started_at=r.step_started_at, pending_command=pending_command,
        history=[rollout_pb2.RolloutEvent(time=h["time"], kind=h["kind"], detail=h["detail"]) for h in r.history])


@dataclass(frozen=True)
class RolloutStatus:
    """What ``rollout status`` shows (the SDK's and the CLI's view of a ``RolloutStatus``)."""

    name: str
    alias: str
    from_version: int
    to_version: int
    state: str
    step: int
    steps: tuple[int, ...]
    weights: dict[int, int]
    gates: Gates
    reason: str
    interval_s: float
    max_error_rate: float
    max_p99_ms: float
    min_requests: int
    regions: tuple[str, ...]
    region: str
    warm: bool
    warm_note: str
    owner: str
    pending_command: str
    created_at: float
    updated_at: float
    step_started_at: float
    history: tuple[dict[str, Any], ...]

    @property
    def weight(self) -> int:
        """The new version's weight now."""
        return self.weights.get(self.to_version, 0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["weights"] = {str(v): w for v, w in sorted(self.weights.items())}
        d["alias_targets"] = encode(tuple(sorted(self.weights.items()))) if self.weights else ""
        return d


def status_from_pb(pb: rollout_pb2.RolloutStatus) -> RolloutStatus:
    g = pb.gates
    regions = tuple(pb.regions)
    return RolloutStatus(
        name=pb.name, alias=pb.alias, from_version=pb.from_version, to_version=pb.to_version, state=pb.state,
        step=pb.step, steps=tuple(pb.steps), weights={t.version: t.weight for t in pb.weights},
        gates=Gates(_figures_from_pb(g.old), _figures_from_pb(g.new), g.window_seconds, g.verdict, g.judged_at,
                    g.region),
        reason=pb.reason, interval_s=pb.interval_seconds, max_error_rate=pb.max_error_rate, max_p99_ms=pb.max_p99_ms,
        min_requests=pb.min_requests, regions=regions,
        region=regions[pb.region_index] if 0 <= pb.region_index < len(regions) else "", warm=pb.warm,
        warm_note=pb.warm_note, owner=pb.owner, pending_command=pb.pending_command, created_at=pb.created_at,
        updated_at=pb.updated_at, step_started_at=pb.step_started_at,
        history=tuple({"time": h.time, "kind": h.kind, "detail": h.detail} for h in pb.history))
