"""The rollout controller: every store process runs one; a lease in Redis makes exactly one of them drive each
rollout, and when that process dies (stops renewing) another one takes the lease and continues from the same step.

One driver per rollout walks it: warm the new version on the workers that hold the old one, move the alias to the
step's weights by compare-and-set, judge each window of real traffic (rollout_gates.py), and on the step's end
promote to the next step; roll back (alias to the old version only, by compare-and-set) when a gate fails. A move
is recorded as *pending* before the alias changes and completed after, so a driver that dies between the two
leaves a record its successor can finish: the alias at the pending weights completes the step, at the old weights
the move is simply made again, anywhere else someone moved it by hand and the rollout stops (aborted, saying so).
Every state change is one owner-checked script that also appends a ROLLOUT_CHANGED event to the store's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from typing import Any

from adapterfleet.common.aio import wait_event
from adapterfleet.common.errors import AdapterFleetError, AliasConflict
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.rollout_config import RolloutConfig
from adapterfleet.store.rollout_gates import FAIL, PASS, gates_of, judge
from adapterfleet.store.rollout_record import ABORTED, DONE, PAUSED, ROLLED_BACK, RUNNING, Gates, Rollout, step_targets
from adapterfleet.store.rollout_redis import RolloutRedis
from adapterfleet.store.rollout_regions import RegionalAlias
from adapterfleet.store.rollout_warm import Warmer
from adapterfleet.store.targets import Targets, decode, encode

log = logging.getLogger("adapterfleet.store.rollout")


class LeaseLost(Exception):
    """Another store process drives this rollout now; this one stops touching it."""


class RolloutController:
    def __init__(self, rr: RolloutRedis, index: RedisIndex, warmer: Warmer, cfg: RolloutConfig, owner: str,
                 clock=time.time):
        self.rr = rr
        self.index = index
        self.aliases = RegionalAlias(index)
        self.warmer = warmer
        self.cfg = cfg
        self.owner = owner
        self._clock = clock
        self._drivers: dict[str, asyncio.Task] = {}
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self.view: list[Rollout] = []          # every rollout as last read (metrics, status)
        self.takeovers = 0

    # --- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.cfg.enabled and self._task is None:
            self._task = asyncio.ensure_future(self._scan_loop())

    def kick(self) -> None:
        """Look now (a rollout was started or commanded here)."""
        self._wake.set()

    async def stop(self, release: bool = True) -> None:
        """Stop driving. ``release``: hand the leases over at once (a clean stop); without it, like a crash, the
        other store processes take over when the leases expire."""
        tasks = [t for t in (self._task, *self._drivers.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            while not t.done():  # a cancellation lost in a library's await is sent again
                await asyncio.wait((t,), timeout=1.0)
                t.cancel()
            if not t.cancelled():
                t.exception()  # retrieved: a driver that failed as it stopped is not logged as never retrieved
        for rid in list(self._drivers) if release else ():
            with contextlib.suppress(Exception):  # a clean stop hands over at once; a crash waits out the lease
                await self.rr.release(rid, self.owner)
        self._drivers.clear()
        self._task = None

    def driving(self) -> set[str]:
        return {rid for rid, t in self._drivers.items() if not t.done()}

    async def _scan_loop(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - Redis down: keep trying; leases expire meanwhile
                log.warning("rollout controller: %s", err)
            self._wake.clear()
            await wait_event(self._wake, self.cfg.tick_s)  # not wait_for: stop() must not lose its cancellation

    async def scan(self) -> None:
        """Renew or take the lease of every active rollout; start a driver for each one held."""
        self.view = await self.rr.all()
        active = {r.id for r in self.view if r.active}
        for rid in active:
            held = await self.rr.hold(rid, self.owner, self.cfg.lease_s)
            task = self._drivers.get(rid)
            if held and (task is None or task.done()):
                self._drivers[rid] = asyncio.ensure_future(self._drive(rid))
            elif not held and task is not None:
                task.cancel()
                del self._drivers[rid]
        for rid in [rid for rid in self._drivers if rid not in active]:
            self._drivers.pop(rid).cancel()
            await self.rr.release(rid, self.owner)

    # --- one rollout ------------------------------------------------------------------------------------------------
    async def _drive(self, rid: str) -> None:
        first = True
        while True:
            try:
                r = await self.rr.get(rid)
                if r is None or not r.active:
                    return
                if first and r.owner != self.owner:
                    r = await self._take_over(r)
                first = False
                cmd = await self.rr.pending_command(rid)
                await self.step(r, cmd)
            except LeaseLost:
                log.info("rollout %s: another store process drives it now", rid)
                return
            except asyncio.CancelledError:
                raise
            except Exception as err:  # noqa: BLE001 - Redis or the registry failed: try again on the next tick
                log.warning("rollout %s: %s", rid, err)
            await asyncio.sleep(self.cfg.tick_s)

    async def _write(self, r: Rollout, kind: str = "", detail: str = "", done_seq: str = "") -> Rollout:
        r = replace(r, owner=self.owner)
        if not await self.rr.write(r, self.owner, kind=kind, detail=detail, done_seq=done_seq):
            raise LeaseLost(r.id)
        if kind:
            log.info("rollout %s: %s: %s", r.id, kind, detail)
        return r

    async def _take_over(self, r: Rollout) -> Rollout:
        now = self._clock()
        if r.owner:
            self.takeovers += 1
            detail = (f"{self.owner} continues at step {r.step + 1} of {len(r.steps)} ({r.state}); "
                      f"{r.owner} stopped renewing its lease")
            return await self._write(r.noted(now, "taken_over", detail), "taken_over", detail)
        return await self._write(r)

    async def step(self, r: Rollout, cmd: dict[str, Any] | None) -> None:
        """One look at a rollout this process drives: finish a pending move, carry out a command, judge, promote."""
        now = self._clock()
        if r.pending:
            r = await self._finish_pending(r)
            if not r.active:
                return
        if cmd:
            await self._command(r, str(cmd.get("cmd", "")), str(cmd.get("seq", "")))
            return
        if r.state != RUNNING:
            return
        if r.step < 0:
            await self._advance(r, 0)
            return
        current = await self.aliases.get(r.name, r.alias, r.region)
        if current != r.targets:
            await self._moved_by_hand(r, current)
            return
        old = await self.rr.figures(r.from_key, r.step_started_at, now, r.region)
        new = await self.rr.figures(r.to_key, r.step_started_at, now, r.region)
        verdict = judge(r, old, new)
        gates = gates_of(r, old, new, verdict, now - r.step_started_at, now)
        if verdict.outcome == FAIL:
            await self._back(replace(r, gates=gates), ROLLED_BACK, verdict.text.removeprefix("fail: "))
        elif verdict.outcome == PASS and now - r.step_started_at >= r.interval_s:
            await self._advance(replace(r, gates=gates), r.step + 1)
        elif gates.verdict != r.gates.verdict or now - r.gates.judged_at >= max(1.0, self.cfg.tick_s):
            await self._write(replace(r, gates=gates, updated_at=now))

    async def _command(self, r: Rollout, cmd: str, seq: str) -> None:
        now = self._clock()
        if cmd == "pause" and r.state == RUNNING:
            await self._write(r.noted(now, "paused", "paused by request", state=PAUSED), "paused", "paused",
                              done_seq=seq)
        elif cmd == "resume" and r.state == PAUSED:
            # the step's window starts again: figures from before the pause do not count towards promotion
            await self._write(r.noted(now, "resumed", f"resumed at step {r.step + 1}", state=RUNNING,
                                      step_started_at=now), "resumed", "resumed", done_seq=seq)
        elif cmd == "abort":
            await self._back(r, ABORTED, "aborted by request", done_seq=seq)
        else:  # nothing to do (pause while paused, resume while running): acknowledged
            await self._write(r, done_seq=seq)

    # --- moves ------------------------------------------------------------------------------------------------------
    async def _advance(self, r: Rollout, i: int) -> None:
        """Warm, then move the alias to step ``i`` (the last step: done)."""
        if r.regions and i >= len(r.steps):  # this region is done: the next one starts at the first step
            r, i = replace(r, region_index=r.region_index + 1, step=-1, weights=encode(((r.from_version, 100),))), 0
        if i >= len(r.steps):
            return
        weight = r.steps[i]
        region = r.region
        if r.warm:
            label = f"v{r.to_version}"
            result = await self.warmer.warm(r.from_key, r.to_key, region, r.warm_timeout_s, label)
            if result.refused:
                await self._back(replace(r, warm_note=result.note), ROLLED_BACK,
                                 f"v{r.to_version} failed to load on a worker while warming: {result.refused}")
                return
            r = await self._write(r.noted(self._clock(), "warmed", result.note, warm_note=result.note), "warmed",
                                  result.note)
            if await self.rr.pending_command(r.id):  # asked while warming: that comes first
                return
        last_region = not r.regions or r.region_index >= len(r.regions) - 1
        final = weight >= 100 and last_region
        where = f" in {region}" if region else ""
        detail = f"step {i + 1} of {len(r.steps)}{where}: v{r.to_version} at {weight}%"
        if final:
            detail += f"; done: {r.alias} is v{r.to_version} only"
        await self._move(r, step_targets(r.from_version, r.to_version, weight), "done" if final else "step", detail,
                         state=DONE if final else RUNNING, step=i)

    async def _back(self, r: Rollout, state: str, reason: str, done_seq: str = "") -> None:
        """Roll back or abort: the alias back to the old version only (every region), by compare-and-set."""
        kind = "rolled_back" if state == ROLLED_BACK else "aborted"
        detail = f"{reason}; {r.alias} back to v{r.from_version}"
        await self._move(r, ((r.from_version, 100),), kind, detail, state=state, reason=reason, done_seq=done_seq,
                         everywhere=True)

    async def _move(self, r: Rollout, targets: Targets, kind: str, detail: str, *, done_seq: str = "",
                    everywhere: bool = False, **changes: Any) -> None:
        now = self._clock()
        pending = {"targets": encode(targets), "kind": kind, "detail": detail, "everywhere": everywhere,
                   "changes": changes}
        r = await self._write(replace(r, pending=pending, updated_at=now))
        try:
            await self.aliases.move(r, targets, everywhere)
        except AliasConflict:
            current = await self.aliases.get(r.name, r.alias, r.region)
            if current != targets:
                await self._moved_by_hand(r, current, done_seq)
                return
        except AdapterFleetError as err:  # a version was yanked, the alias deleted...: stop, leave things as they are
            await self._write(r.noted(now, "aborted", f"could not move {r.alias}: {err.message}", pending=None,
                                      state=ABORTED, reason=f"could not move the alias: {err.message}"),
                              "aborted", err.message, done_seq=done_seq)
            return
        await self._complete(r, done_seq)

    async def _complete(self, r: Rollout, done_seq: str = "") -> Rollout:
        assert r.pending is not None
        p, now = r.pending, self._clock()
        changes = dict(p["changes"])
        changes.setdefault("step_started_at", now)
        if changes.get("state") in (DONE, ROLLED_BACK, ABORTED):
            changes["step_started_at"] = r.step_started_at
        if p["kind"] == "step":  # a new step's window starts empty
            changes["gates"] = Gates()
        nxt = r.noted(now, p["kind"], p["detail"], pending=None, weights=p["targets"], **changes)
        return await self._write(nxt, p["kind"], p["detail"], done_seq=done_seq)

    async def _finish_pending(self, r: Rollout) -> Rollout:
        """A move its driver began and did not record (it died in between): finish or forget it."""
        assert r.pending is not None
        targets = decode(r.pending["targets"])
        current = await self.aliases.get(r.name, r.alias, "" if r.pending["everywhere"] else r.region)
        if current == targets:
            return await self._complete(r)
        if current == r.targets:  # the alias never moved: forget the move; the next look makes it again
            return await self._write(replace(r, pending=None))
        await self._moved_by_hand(r, current)
        return replace(r, state=ABORTED)

    async def _moved_by_hand(self, r: Rollout, current: Targets | None, done_seq: str = "") -> None:
        now = self._clock()
        shown = encode(current) if current else "nothing (deleted)"
        reason = (f"alias {r.id}{f' ({r.region})' if r.region else ''} was moved by someone else to {shown} while "
                  f"the rollout had it at {r.weights or 'its starting point'}; the rollout stopped and left the alias "
                  "as it is")
        await self._write(r.noted(now, "aborted", reason, pending=None, state=ABORTED, reason=reason), "aborted",
                          reason, done_seq=done_seq)
