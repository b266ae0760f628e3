"""`adapterfleet up`: a whole fleet on localhost: store (embedded default), N workers, a router.

Each part is its own process (see :mod:`adapterfleet.cli.local_fleet`); the addresses are printed; Ctrl-C (or
SIGTERM) stops everything, workers draining first.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from adapterfleet.cli.local_fleet import FleetConfig, LocalFleet, interrupt_on_sigterm


def run_up(args) -> int:
    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    base = args.base_model
    if not base:
        from adapterfleet.demo.base_model import build_demo_base  # noqa: PLC0415 - imports torch

        base = str(build_demo_base(data / "demo-base"))
    fleet = LocalFleet(FleetConfig(data, base, port=args.port, workers=args.workers, max_slots=args.max_slots))
    interrupt_on_sigterm()
    try:
        with fleet:
            fleet.wait_ready()
            if args.json:
                print(json.dumps(fleet.summary(), sort_keys=True), flush=True)
            else:
                prompt = "--prompt 'hello'" if _has_tokenizer(Path(base)) else "--prompt-ids 1,2,3"
                print(f"{fleet.describe()}\ntry:    adapterfleet generate --router {fleet.cfg.router_address} "
                      f"{prompt} --json\n        curl -s {fleet.cfg.http_url}/models"
                      + (' -H "authorization: Bearer $ADAPTERFLEET_TOKEN"' if fleet.cfg.secure else "")
                      + "\nCtrl-C stops the fleet.",
                      flush=True)
            if args.exit_after is not None:
                time.sleep(args.exit_after)
                return 0
            dead = fleet.wait()
            print(f"a fleet process exited: {dead}; stopping the rest", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0


def _has_tokenizer(base: Path) -> bool:
    """Whether text prompts work on this base model (else the hint uses token ids)."""
    return any((base / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
