"""`adapterfleet rollout start|status|pause|resume|abort|list`: rolling an alias to a new version, driven by the
store (through the SDK's Rollouts client; base install only)."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adapterfleet.store.rollout_record import RolloutStatus

DEFAULTS = "steps 5,25,50,100, interval 60s, max error rate 0.01, min requests 100"


def add_parsers(sub: argparse._SubParsersAction, store_help: str) -> None:
    rollout = sub.add_parser("rollout", help="roll an alias to a new version in steps, judged on real traffic, "
                                             "rolled back on its own").add_subparsers(dest="rollout_cmd",
                                                                                      required=True)

    def common(sp: argparse.ArgumentParser, named: bool = True) -> None:
        if named:
            sp.add_argument("name", help="the adapter (tenant/name)")
            sp.add_argument("--alias", required=True, help="the alias to roll, e.g. prod")
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.add_argument("--store", help=store_help)

    s = rollout.add_parser("start", help=f"start rolling NAME@ALIAS to version --to (defaults: {DEFAULTS})")
    common(s)
    s.add_argument("--to", type=int, required=True, metavar="V", help="the new version")
    s.add_argument("--steps", default="", help="the new version's weight at each step, ending at 100 "
                                               "(default 5,25,50,100)")
    s.add_argument("--interval", default="", help="how long each step runs before it is judged, e.g. 60s, 5m "
                                                  "(default 60s)")
    s.add_argument("--max-error-rate", type=float, help="how far the new version's error rate may exceed the old "
                                                        "one's (default 0.01)")
    s.add_argument("--max-p99-ms", type=float, help="the new version's p99 latency limit (default: none)")
    s.add_argument("--min-requests", type=int, help="requests to the new version before a window is judged "
                                                    "(default 100)")
    s.add_argument("--regions", default="", help="promote region by region, in this order: a,b")
    s.add_argument("--no-warm", action="store_true", help="do not load the new version on the workers that hold "
                                                          "the old one before each step")
    s.add_argument("--warm-timeout", default="", help="how long a step waits for the workers to hold the new "
                                                      "version before it proceeds anyway (default 120s)")
    common(rollout.add_parser("status", help="state, step, weights, the last window's gate figures, the reason "
                                             "for a rollback"))
    common(rollout.add_parser("pause", help="hold the alias where it is"))
    common(rollout.add_parser("resume", help="continue a paused rollout (the step's interval starts again)"))
    common(rollout.add_parser("abort", help="stop, and send all traffic back to the old version"))
    s = rollout.add_parser("list", help="every rollout the store knows, finished ones too")
    s.add_argument("--prefix", default="", help="only names that start with this")
    common(s, named=False)


def add_store_flags(s: argparse.ArgumentParser) -> None:
    """`store serve`'s rollout controller settings (defaults: RolloutConfig's)."""
    from adapterfleet.store.rollout_config import RolloutConfig  # noqa: PLC0415 - a dataclass, no I/O

    s.add_argument("--no-rollouts", action="store_true", help="do not drive rollouts in this store process (other "
                                                              "store processes on the same Redis do)")
    s.add_argument("--rollout-lease-seconds", type=float, default=RolloutConfig.lease_s,
                   help="a store process that stops renewing a rollout's lease is replaced after this long")
    s.add_argument("--rollout-tick-seconds", type=float, default=RolloutConfig.tick_s,
                   help="how often the controller looks at its rollouts")
    s.add_argument("--rollout-warm-settle-seconds", type=float, default=RolloutConfig.warm_settle_s,
                   help="after the workers hold the new version: time for routers to see it before a step")


def rollout_config(args):
    from adapterfleet.common.errors import InvalidArgument  # noqa: PLC0415
    from adapterfleet.store.rollout_config import RolloutConfig  # noqa: PLC0415

    lease, tick = args.rollout_lease_seconds, args.rollout_tick_seconds
    if not 0 < tick < lease:
        raise InvalidArgument(f"--rollout-tick-seconds ({tick:g}) must be positive and shorter than "
                              f"--rollout-lease-seconds ({lease:g}): the lease is renewed every tick")
    return RolloutConfig(enabled=not args.no_rollouts, lease_s=lease, tick_s=tick,
                         warm_settle_s=args.rollout_warm_settle_seconds)


def run(args, store_addr: str) -> int:
    from adapterfleet.cli.flags import client_security  # noqa: PLC0415 - with the client only
    from adapterfleet.sdk.rollouts import Rollouts  # noqa: PLC0415

    with Rollouts(store_addr, security=client_security(args)) as rollouts:
        cmd = args.rollout_cmd
        if cmd == "list":
            found = rollouts.list(args.prefix)
            if args.json:
                print(json.dumps({"rollouts": [s.to_json() for s in found]}, sort_keys=True))
            else:
                print(list_text(found))
            return 0
        if cmd == "start":
            s = rollouts.start(
                args.name, args.alias, to=args.to, steps=args.steps, interval=args.interval or None,
                max_error_rate=args.max_error_rate, max_p99_ms=args.max_p99_ms, min_requests=args.min_requests,
                regions=[r.strip() for r in args.regions.split(",") if r.strip()], warm=not args.no_warm,
                warm_timeout=args.warm_timeout or None)
        elif cmd == "status":
            s = rollouts.status(args.name, args.alias)
        else:
            s = getattr(rollouts, cmd)(args.name, args.alias)
    print(json.dumps(s.to_json(), sort_keys=True) if args.json else status_text(s))
    return 0


def _weights(s: RolloutStatus) -> str:
    return ",".join(f"{v}:{w}" for v, w in sorted(s.weights.items())) or "-"


def _step(s: RolloutStatus) -> str:
    if s.step < 0:
        return f"before step 1 of {len(s.steps)}"
    where = f" in {s.region}" if s.region else ""
    return f"step {s.step + 1} of {len(s.steps)}{where}"


def status_text(s: RolloutStatus) -> str:
    g = s.gates
    lines = [f"{s.name}@{s.alias}: {s.state}, {_step(s)}, v{s.from_version} -> v{s.to_version} "
             f"(steps {','.join(map(str, s.steps))}; {s.interval_s:g}s each)",
             f"  weights      {_weights(s)}"]
    if g.judged_at:
        lines.append(f"  last window  {g.window_s:.1f}s: v{g.new.version} {g.new.requests} requests, "
                     f"{100 * g.new.error_rate:.1f}% errors, p99 {g.new.p99_ms:.0f} ms; v{g.old.version} "
                     f"{g.old.requests} requests, {100 * g.old.error_rate:.1f}% errors, p99 {g.old.p99_ms:.0f} ms")
        lines.append(f"  verdict      {g.verdict}")
    gates = f"error rate +{s.max_error_rate:g}" + (f", p99 <= {s.max_p99_ms:g} ms" if s.max_p99_ms else "")
    lines.append(f"  gates        {gates}, judged after {s.min_requests} requests")
    if s.warm_note:
        lines.append(f"  warm         {s.warm_note}")
    if s.reason:
        lines.append(f"  reason       {s.reason}")
    if s.pending_command:
        lines.append(f"  pending      {s.pending_command} (not carried out yet: is a store process running?)")
    if s.owner:
        lines.append(f"  driven by    {s.owner}")
    return "\n".join(lines)


def list_text(found: list[RolloutStatus]) -> str:
    if not found:
        return "(no rollouts)"
    width = max(len(f"{s.name}@{s.alias}") for s in found)
    lines = [f"{'rollout':{width}s} {'state':11s} {'from':>4s} {'to':>4s} {'step':>9s} {'weights':14s} updated"]
    for s in found:
        step = f"{s.step + 1}/{len(s.steps)}" if s.step >= 0 else f"0/{len(s.steps)}"
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.updated_at))
        lines.append(f"{s.name + '@' + s.alias:{width}s} {s.state:11s} {s.from_version:4d} {s.to_version:4d} "
                     f"{step:>9s} {_weights(s):14s} {updated}")
    return "\n".join(lines)
