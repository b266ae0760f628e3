"""The rollouts' domain API (what the gRPC servicer calls): start, look, command, list, and routers' figures."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from adapterfleet.common.errors import FailedPrecondition, InvalidArgument, NotFound
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.refs import validate_alias, validate_name
from adapterfleet.store.rollout_config import RolloutConfig
from adapterfleet.store.rollout_controller import RolloutController
from adapterfleet.store.rollout_figures import Figures
from adapterfleet.store.rollout_record import (
    COMMANDS,
    DEFAULT_INTERVAL_S,
    DEFAULT_MAX_ERROR_RATE,
    DEFAULT_MIN_REQUESTS,
    DEFAULT_WARM_TIMEOUT_S,
    MAX_REGIONS,
    RUNNING,
    Rollout,
    check_steps,
    rollout_id,
)
from adapterfleet.store.rollout_redis import RolloutRedis
from adapterfleet.store.targets import encode

MAX_REPORTED_VERSIONS = 1024  # versions in one router report
_REGION_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class StartSpec:
    name: str
    alias: str
    to_version: int
    steps: tuple[int, ...] = ()
    interval_s: float = 0.0                  # 0: the default
    max_error_rate: float | None = None
    max_p99_ms: float = 0.0
    min_requests: int | None = None
    regions: tuple[str, ...] = ()
    warm: bool = True
    warm_timeout_s: float = 0.0              # 0: the default


@dataclass(frozen=True)
class Shown:
    rollout: Rollout
    pending_command: str
    owner: str


def _region(region: str) -> str:
    if not region or len(region) > 64 or not set(region) <= _REGION_OK:
        raise InvalidArgument(f"invalid region {region[:70]!r}: use letters, digits and '-_.'")
    return region


def _number(value: float, what: str, low: float, high: float) -> float:
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgument(f"{what} must be between {low:g} and {high:g}, not {value:g}")
    return value


class RolloutService:
    def __init__(self, rr: RolloutRedis, index: RedisIndex, controller: RolloutController, cfg: RolloutConfig,
                 clock=time.time, primary: str = ""):
        self.primary = primary  # set in a secondary region's store: rollouts are started and driven there
        self.rr = rr
        self.index = index
        self.controller = controller
        self.cfg = cfg
        self._clock = clock
        self._keys: set[str] = set()     # version keys under active rollouts: the figures worth keeping
        self._keys_at = -math.inf

    async def start(self, spec: StartSpec) -> Shown:
        if self.primary:
            raise FailedPrecondition(f"this store is a secondary region's; aliases move on the primary: start the "
                                     f"rollout there (--store {self.primary})")
        validate_name(spec.name)
        validate_alias(spec.alias)
        steps = check_steps(tuple(spec.steps))
        interval = _number(spec.interval_s or DEFAULT_INTERVAL_S, "--interval", 0.01, 7 * 86400)
        max_error_rate = _number(DEFAULT_MAX_ERROR_RATE if spec.max_error_rate is None else spec.max_error_rate,
                                 "--max-error-rate", 0.0, 1.0)
        max_p99 = _number(spec.max_p99_ms, "--max-p99-ms", 0.0, 3_600_000)
        min_requests = DEFAULT_MIN_REQUESTS if spec.min_requests is None else spec.min_requests
        _number(min_requests, "--min-requests", 0, 10**9)
        warm_timeout = _number(spec.warm_timeout_s or DEFAULT_WARM_TIMEOUT_S, "warm timeout", 0.1, 3600)
        if len(spec.regions) > MAX_REGIONS:
            raise InvalidArgument(f"--regions names at most {MAX_REGIONS} regions, not {len(spec.regions)}")
        regions = tuple(_region(r) for r in spec.regions)
        if len(set(regions)) != len(regions):
            raise InvalidArgument(f"--regions names a region twice: {','.join(regions)}")
        rid = rollout_id(spec.name, spec.alias)
        current = await self.rr.get(rid)
        if current is not None and current.active:  # (the start script checks this again, atomically)
            raise FailedPrecondition(
                f"a rollout of {rid} is already {current.state} (v{current.from_version} -> v{current.to_version}); "
                f"`adapterfleet rollout abort {spec.name} --alias {spec.alias}` first, or wait for it to finish")
        versions, yanked, targets = await self.index.state(spec.name, spec.alias)
        if targets is None:
            raise NotFound(f"alias {rid} does not exist; a rollout moves an existing alias (`adapterfleet alias set "
                           f"{spec.name} {spec.alias} VERSION` first)")
        live = [(v, w) for v, w in targets if w > 0]
        if len(live) != 1:
            raise FailedPrecondition(f"alias {rid} points at {encode(targets)}; a rollout starts from one version: "
                                     f"set the alias to one version first")
        old = live[0][0]
        new = spec.to_version
        if new not in versions:
            raise NotFound(f"{spec.name}@{new} does not exist; push it first (`adapterfleet ls {spec.name}`)")
        if new in yanked:
            raise FailedPrecondition(f"{spec.name}@{new} is yanked; a rollout cannot send traffic to it")
        if new == old:
            raise FailedPrecondition(f"alias {rid} already points at v{new} only; nothing to roll out")
        now = self._clock()
        r = Rollout(name=spec.name, alias=spec.alias, from_version=old, to_version=new,
                    from_key=f"{spec.name}@{versions[old]}", to_key=f"{spec.name}@{versions[new]}", steps=steps,
                    interval_s=interval, max_error_rate=max_error_rate, max_p99_ms=max_p99,
                    min_requests=int(min_requests), regions=regions, warm=spec.warm, warm_timeout_s=warm_timeout,
                    state=RUNNING, step=-1, region_index=0 if regions else -1, weights=encode(((old, 100),)),
                    created_at=now, updated_at=now, step_started_at=now)
        where = f" region by region ({', '.join(regions)})" if regions else ""
        detail = (f"v{old} -> v{new} in steps {','.join(map(str, steps))}{where}, {interval:g}s each; gates: error "
                  f"rate +{max_error_rate:g}{f', p99 {max_p99:g} ms' if max_p99 else ''}, {min_requests} requests")
        r = r.noted(now, "started", detail)
        await self.rr.start(r, r.event_detail("started", detail))
        self._keys_at = -math.inf
        self.controller.kick()
        return await self.status(spec.name, spec.alias)

    async def status(self, name: str, alias: str) -> Shown:
        validate_name(name)
        validate_alias(alias)
        rid = rollout_id(name, alias)
        r = await self.rr.get(rid)
        if r is None:
            raise NotFound(f"there is no rollout of {rid}; `adapterfleet rollout list` shows them")
        cmd = await self.rr.pending_command(rid)
        return Shown(r, str(cmd["cmd"]) if cmd else "", await self.rr.holder(rid) if r.active else "")

    async def command(self, name: str, alias: str, cmd: str) -> Shown:
        """Queue ``cmd`` for the rollout's driver and wait (up to command_wait_s) until it is carried out."""
        if cmd not in COMMANDS:
            raise InvalidArgument(f"unknown rollout command {cmd!r}; use one of {', '.join(COMMANDS)}")
        validate_name(name)
        validate_alias(alias)
        rid = rollout_id(name, alias)
        if self.primary:
            raise FailedPrecondition(f"this store is a secondary region's; rollouts are driven on the primary "
                                     f"(--store {self.primary})")
        seq = await self.rr.command(rid, cmd)
        self.controller.kick()
        deadline = time.monotonic() + self.cfg.command_wait_s
        while time.monotonic() < deadline:
            pending = await self.rr.pending_command(rid)
            if not pending or str(pending.get("seq")) != seq:
                break
            await asyncio.sleep(min(0.05, self.cfg.tick_s))
        return await self.status(name, alias)

    async def list(self, prefix: str = "") -> list[Shown]:
        rollouts = [r for r in await self.rr.all() if r.name.startswith(prefix)]
        cmds = await self.rr.pending_commands()
        return [Shown(r, str(cmds[r.id]["cmd"]) if r.id in cmds else "", r.owner if r.active else "")
                for r in rollouts]

    async def report(self, region: str, windows: dict[str, Figures]) -> int:
        """Keep routers' figures for the versions under an active rollout; returns how many were kept."""
        if len(windows) > MAX_REPORTED_VERSIONS:
            raise InvalidArgument(f"a report has {len(windows)} versions, more than the limit of "
                                  f"{MAX_REPORTED_VERSIONS}")
        region = _region(region or "local")
        now = self._clock()
        if now - self._keys_at > max(self.cfg.tick_s, 0.2):
            self._keys = {k for r in await self.rr.active() for k in (r.from_key, r.to_key)}
            self._keys_at = now
        kept = {k: f for k, f in windows.items() if k in self._keys}
        await self.rr.add_figures(region, kept, now)
        return len(kept)
