"""`adapterfleet worker load|unload|pin|resident|stats --worker ADDR` and `adapterfleet router stats --router ADDR`:
what a worker holds and how the fleet is doing, through the SDK's FleetClient (base install only)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterfleet.sdk.admin import AdapterState, WorkerStats
    from adapterfleet.sdk.fleet import RouterStats

WORKER_COMMANDS = ("load", "unload", "pin", "resident", "stats")
TIMEOUT_S = 120.0  # a load may fetch the adapter from the store first


def add_parsers(worker: argparse._SubParsersAction, router: argparse._SubParsersAction) -> None:
    def target(sp: argparse.ArgumentParser, role: str) -> None:
        sp.add_argument(f"--{role}", required=True, help=f"the {role}'s address (or ADAPTERFLEET_{role.upper()})")
        sp.add_argument("--json", action="store_true", help="print one JSON object")

    s = worker.add_parser("load", help="make a worker hold an adapter now, before requests need it")
    s.add_argument("ref")
    s.add_argument("--pin", action="store_true", help="and keep it from eviction")
    s.add_argument("--tier", default="active", help="where to hold it: active (the default), host or disk")
    target(s, "worker")
    s = worker.add_parser("unload", help="drop an adapter (a ref or a key) from every tier of a worker")
    s.add_argument("ref")
    target(s, "worker")
    s = worker.add_parser("pin", help="pin an adapter on a worker (never evicted); --unpin undoes it")
    s.add_argument("ref")
    s.add_argument("--unpin", action="store_true")
    target(s, "worker")
    target(worker.add_parser("resident", help="the adapter versions a worker holds, in every tier"), "worker")
    target(worker.add_parser("stats", help="a worker's counters and what it holds"), "worker")
    target(router.add_parser("stats", help="the router's counters: requests, affinity, workers"), "router")


def run(args) -> int:
    from adapterfleet.cli.flags import client_security  # noqa: PLC0415 - with the client, as below
    from adapterfleet.sdk.fleet import FleetClient  # noqa: PLC0415 - grpc only when a command runs

    if args.command == "router":
        with FleetClient(args.router, timeout=TIMEOUT_S, security=client_security(args)) as router:
            stats = router.stats()
        _print(args, asdict(stats), lambda: stats_text(stats))
        return 0
    with FleetClient(args.worker, timeout=TIMEOUT_S, security=client_security(args)) as worker:
        cmd = args.worker_cmd
        if cmd == "load":
            state = worker.load_adapter(args.ref, pin=args.pin, tier=args.tier)
            _print(args, asdict(state), lambda: f"loaded {_state_line(state)}")
        elif cmd == "unload":
            unloaded = worker.unload_adapter(args.ref)
            _print(args, {"ref": args.ref, "unloaded": unloaded},
                   lambda: f"unloaded {args.ref}" if unloaded else f"{args.ref} was not held by {args.worker}")
        elif cmd == "pin":
            state = worker.pin(args.ref, not args.unpin)
            _print(args, asdict(state), lambda: f"{'unpinned' if args.unpin else 'pinned'} {_state_line(state)}")
        elif cmd == "resident":
            held = worker.resident()
            _print(args, {"adapters": [asdict(a) for a in held]}, lambda: resident_text(held))
        else:
            ws = worker.worker_stats()
            _print(args, asdict(ws), lambda: worker_stats_text(ws))
    return 0


def _print(args, obj: dict, text) -> None:
    print(json.dumps(obj, sort_keys=True) if args.json else text())


def _state_line(a: AdapterState) -> str:
    where = f"{a.tier}, slot {a.slot}" if a.slot >= 0 else a.tier
    return f"{a.key} ({where}, {a.bytes} B{', pinned' if a.pinned else ''})"


def resident_text(adapters: list[AdapterState] | tuple[AdapterState, ...]) -> str:
    if not adapters:
        return "(no adapters held)"
    width = max(len(a.key) for a in adapters)
    lines = [f"{'adapter':{width}s} {'tier':7s} {'slot':>4s} {'bytes':>10s} {'pinned':>6s} {'in use':>6s} "
             f"{'hits':>6s}"]
    lines += [f"{a.key:{width}s} {a.tier:7s} {a.slot if a.slot >= 0 else '-':>4} {a.bytes:10d} "
              f"{'yes' if a.pinned else 'no':>6s} "
              f"{a.in_use:6d} {a.hits:6d}" for a in sorted(adapters, key=lambda a: a.key)]
    return "\n".join(lines)


def worker_stats_text(s: WorkerStats) -> str:
    return (f"base model {s.base_model} ({s.fingerprint}), region {s.region or '-'}\n"
            f"requests {s.requests_total}, tokens {s.tokens_generated} ({s.tokens_per_second:.1f}/s over the last "
            f"minute); queue {s.queue_depth}, running {s.running}\n"
            f"slots {s.max_slots}; bytes active {s.active_bytes}, host {s.host_bytes}, disk {s.disk_bytes}; "
            f"cold loads {s.cold_loads}, evictions {s.evictions}\n{resident_text(s.adapters)}")


def _short(key: str) -> str:
    name, _, digest = key.partition("@")
    return f"{name}@{digest[:19]}..." if digest else name


def stats_text(s: RouterStats) -> str:
    lines = [(f"router stats: {s.requests} requests, {s.retries} retries, {s.failures} failures; "
              f"affinity hit rate {100 * s.affinity_hit_rate:.1f}% (adapter requests placed on a worker that "
              "already held the adapter)"),
             f"  {'adapter':34s} {'hits':>5s} {'misses':>6s} {'copies added':>12s}"]
    lines += [f"  {_short(a.key):34s} {a.hits:5d} {a.misses:6d} {a.replications:12d}" for a in s.adapters]
    lines.append(f"  {'worker':22s} {'healthy':>7s} {'in flight':>9s} {'load':>6s} {'resident adapters':>17s}")
    lines += [f"  {w.address:22s} {'yes' if w.healthy else 'no':>7s} {w.inflight:9d} {w.load:6.2f} {w.resident:17d}"
              for w in sorted(s.workers, key=lambda w: w.address)]
    return "\n".join(lines)
