"""Warm before switch: before a step sends traffic to the new version, the workers that hold the old version load
the new one into the same tier (Worker.LoadAdapter), and the step waits until the registry shows it resident on
them (routers place by the registry), then a moment more for routers to poll it. Past the timeout the step
proceeds and says so. A worker that refuses the new version for a reason that is the version's own (it does not
fit the base model, its bytes are bad, its signature is refused) fails the warm: the rollout rolls back before any
request meets it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from adapterfleet.common.security import ClientSecurity, open_aio_channel
from adapterfleet.common.tiers import ACTIVE, TIERS, tier_to_pb
from adapterfleet.store.rollout_config import RolloutConfig
from adapterfleet.store.workers import WorkerRecord
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger("adapterfleet.store.rollout")
VERSION_FAULTS = ("FAILED_PRECONDITION", "DATA_LOSS", "INVALID_ARGUMENT")  # a load refused for the version's sake


@dataclass(frozen=True)
class WarmResult:
    note: str                 # what status shows
    refused: str = ""         # set: a worker refused the version itself (roll back); the reason


def _rank(tier: str) -> int:
    return TIERS.index(tier) if tier in TIERS else len(TIERS)


def _holds(record: WorkerRecord, key: str, tier: str) -> bool:
    """Does the worker hold ``key`` in ``tier`` or a better one (not merely loading it)?"""
    have = record.adapters.get(key)
    return have is not None and have != "loading" and _rank(have) <= _rank(tier)


class Warmer:
    def __init__(self, workers: Callable[[str], Awaitable[list[WorkerRecord]]], cfg: RolloutConfig,
                 security: ClientSecurity):
        self._workers = workers  # region ("" = all) -> live worker records (the registry)
        self._cfg = cfg
        self._security = security

    async def warm(self, old_key: str, new_key: str, region: str, timeout_s: float, label: str) -> WarmResult:
        deadline = time.monotonic() + timeout_s
        records = [r for r in await self._workers(region) if not r.draining]
        holders = {r.id: r.adapters[old_key] for r in records if old_key in r.adapters}
        if not holders:
            return WarmResult(f"no worker holds the old version{f' in {region}' if region else ''}; nothing to warm")
        tier_of = {rid: (t if t in ("active", "host", "disk") else ACTIVE) for rid, t in holders.items()}
        todo = [r for r in records if r.id in holders and not _holds(r, new_key, tier_of[r.id])]
        outcomes = await asyncio.gather(*(self._load(r, new_key, tier_of[r.id], deadline) for r in todo))
        refused = [f"{r.address}: {err}" for r, (code, err) in zip(todo, outcomes, strict=True)
                   if code in VERSION_FAULTS]
        if refused:
            return WarmResult(f"{label} was refused by {len(refused)} of {len(todo)} workers", refused=refused[0])
        failures = [(r, err) for r, (code, err) in zip(todo, outcomes, strict=True) if code]
        failed = {r.id for r, _ in failures}
        want = {rid for rid in holders if rid not in failed}
        resident = await self._wait_resident(new_key, tier_of, want, deadline)
        note = (f"{label} resident on {len(resident)} of {len(holders)} workers that hold the old version "
                f"({len(todo)} loaded it now)")
        if failed:
            r, err = failures[0]
            note += f"; {len(failed)} failed to load it (not the version's fault; {r.address}: {err})"
        if len(resident) < len(want):
            note += f"; timed out after {timeout_s:g}s waiting for the rest, proceeding"
            log.warning("warm before switch: %s", note)
        elif todo:
            await asyncio.sleep(self._cfg.warm_settle_s)  # routers poll the registry: let them see it
        return WarmResult(note)

    async def _load(self, r: WorkerRecord, key: str, tier: str, deadline: float) -> tuple[str, str]:
        """("", "") when the worker loaded it; else (status code name, message)."""
        channel = open_aio_channel(r.address, self._security)
        try:
            stub = worker_pb2_grpc.WorkerStub(channel)
            await stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=key, tier=tier_to_pb(tier)),
                                   timeout=max(0.5, deadline - time.monotonic()))
            return "", ""
        except grpc.aio.AioRpcError as err:
            code = err.code().name if err.code() is not None else "UNKNOWN"
            log.info("warm: %s on %s failed: %s %s", key, r.address, code, err.details())
            return code, f"{code}: {err.details()}"
        finally:
            await channel.close()

    async def _wait_resident(self, key: str, tier_of: dict[str, str], want: set[str], deadline: float) -> set[str]:
        while True:
            records = {r.id: r for r in await self._workers("")}
            resident = {rid for rid in tier_of if rid in records and _holds(records[rid], key, tier_of[rid])}
            if want <= resident or time.monotonic() >= deadline:
                return resident
            await asyncio.sleep(self._cfg.warm_poll_s)
