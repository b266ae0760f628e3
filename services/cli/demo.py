"""`adapterfleet demo`: a local fleet, three toy adapters trained with PEFT, requests through the router.

The fleet's processes start first and boot (each imports torch) while this process trains the adapters; then
each is pushed as ``<task>@prod``, ``--requests`` greedy requests (the three adapters and the base model, on the
same prompts, some at once) go through the router, and the answers and the router's affinity statistics are
printed. Without ``--exit`` the fleet keeps serving until Ctrl-C. torch and peft are imported only in here.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from adapterfleet.cli.local_fleet import FleetConfig, LocalFleet, interrupt_on_sigterm
from adapterfleet.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from adapterfleet.demo.tasks import MAX_ANSWER_CHARS, TASKS, WORDS, prompt_for
from adapterfleet.sdk.fleet import FleetClient, RouterStats

if TYPE_CHECKING:
    from adapterfleet.demo.train import TrainResult

ALIAS = "prod"
BASE = "base model"  # the column of requests without an adapter
CONCURRENCY = 4  # requests in flight at once
REQUEST_TIMEOUT_S = 120.0  # the first request for an adapter waits for its load
WORKERS_VISIBLE_TIMEOUT_S = 30.0


def run_demo(args) -> int:
    started = time.perf_counter()
    if args.requests < 1:
        raise InvalidArgument(f"--requests {args.requests} must be at least 1")
    if args.steps < 0:
        raise InvalidArgument(f"--steps {args.steps} must be 0 (the default: enough to learn) or more")
    data = Path(args.data_dir)
    base = data / "demo-base"
    fleet = LocalFleet(FleetConfig(data, str(base), port=args.port, workers=args.workers))
    _import_training()
    from adapterfleet.demo.base_model import build_demo_base  # noqa: PLC0415 - imports torch

    data.mkdir(parents=True, exist_ok=True)
    build_demo_base(base)
    interrupt_on_sigterm()
    served = False
    try:
        with fleet:
            cfg = fleet.cfg
            print(f"fleet starting: store {cfg.store_address}, {cfg.workers} workers, router {cfg.router_address} "
                  f"(logs in {data}/*.log)", flush=True)
            trained = _train_all(base, data / "demo-adapters", args.steps, fleet.check)
            fleet.wait_ready()
            refs = _push_all(cfg.store_address, trained, _fingerprint(base))
            with FleetClient(cfg.router_address) as router:
                _wait_for_workers(router, cfg.workers)
                plan = request_plan(args.requests, refs)
                t0 = time.perf_counter()
                answers = _ask_all(router, plan)
                print(f"\n{len(plan)} greedy requests through the router ({CONCURRENCY} at a time) in "
                      f"{time.perf_counter() - t0:.1f}s:\n")
                print(answer_table(plan, answers, [BASE, *refs]))
                print()
                print(stats_text(router.stats(timeout=10)))
            print(f"\ndemo ran in {time.perf_counter() - started:.1f}s", flush=True)
            served = True
            if args.exit:
                return 0
            print(f"\n{fleet.describe()}\ntry:    adapterfleet generate --router {cfg.router_address} "
                  f"--adapter {refs[0]} --prompt '{prompt_for(WORDS[0])}'\nCtrl-C stops the fleet.", flush=True)
            dead = fleet.wait()
            print(f"a fleet process exited: {dead}; stopping the rest", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0 if served else 130  # Ctrl-C is how a serving demo ends; before that it is an interruption


def _import_training() -> None:
    """Fail early, with the fix, when PEFT is missing; keep the libraries' progress bars out of the output."""
    import warnings  # noqa: PLC0415

    try:
        import peft  # noqa: F401, PLC0415
        from transformers.utils import logging as hf_logging  # noqa: PLC0415
    except ImportError as err:
        raise FailedPrecondition(f"`adapterfleet demo` trains adapters with PEFT, which is not installed ({err}); "
                                 "install it with: pip install 'adapterfleet[peft]'") from None
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


def _train_all(base: Path, out: Path, steps: int, check_fleet: Callable[[], None]) -> list[TrainResult]:
    from adapterfleet.demo.train import TrainConfig, train_adapter  # noqa: PLC0415 - imports torch and peft

    cfg = TrainConfig(steps=steps) if steps else TrainConfig()
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for task in TASKS:
        check_fleet()  # a part that failed to start stops the demo now, not after all the training
        r = train_adapter(base, task, out / task.name, cfg)
        print(f"trained {task.name:8s} ({task.description}): {cfg.steps} steps in {r.seconds:.1f}s, "
              f"loss {r.loss:.4f} -> {r.path}", flush=True)
        results.append(r)
    return results


def _fingerprint(base: Path) -> str:
    """The base model's fingerprint, recorded in each manifest: workers on another base refuse the adapter."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from adapterfleet.store.base_model import fingerprint  # noqa: PLC0415

    return fingerprint(AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True))


def _push_all(store: str, trained: list[TrainResult], fp: str) -> list[str]:
    from adapterfleet.store.base_model import BaseModelIdentity  # noqa: PLC0415
    from adapterfleet.store.client import StoreClient  # noqa: PLC0415

    refs = []
    with StoreClient(store) as client:
        for r in trained:
            out = client.push_dir(r.path, r.task, alias=ALIAS, base_model=BaseModelIdentity(fingerprint=fp))
            m = out.manifest
            print(f"{'pushed' if out.created else 'already stored:'} {r.task}@{m.version} {m.digest[:19]}... "
                  f"({r.task}@{ALIAS} -> {m.version})", flush=True)
            refs.append(f"{r.task}@{ALIAS}")
    return refs


def _wait_for_workers(router: FleetClient, n: int) -> None:
    """Until the router sees all ``n`` workers healthy (they announce every second), so placement spreads."""
    deadline = time.monotonic() + WORKERS_VISIBLE_TIMEOUT_S
    while True:
        healthy = sum(w.healthy for w in router.stats(timeout=10).workers)
        if healthy >= n:
            return
        if time.monotonic() > deadline:
            raise Unavailable(f"the router sees {healthy} of {n} workers after {WORKERS_VISIBLE_TIMEOUT_S:.0f}s; "
                              "see the worker logs: do they announce to the store?")
        time.sleep(0.25)


def request_plan(n: int, refs: list[str]) -> list[tuple[str, str]]:
    """``n`` (column, word) pairs: each word asked of the base model and of every adapter, word after word."""
    columns = [BASE, *refs]
    return [(columns[i % len(columns)], WORDS[(i // len(columns)) % len(WORDS)]) for i in range(n)]


def _ask_all(router: FleetClient, plan: list[tuple[str, str]]) -> list[str]:
    def ask(item: tuple[str, str]) -> str:
        column, word = item
        return router.generate(prompt_for(word), adapter="" if column == BASE else column,
                               max_new_tokens=MAX_ANSWER_CHARS, timeout=REQUEST_TIMEOUT_S).text

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(ask, plan))


def answer_table(plan: list[tuple[str, str]], answers: list[str], columns: list[str]) -> str:
    """One row per prompt, one column per adapter (and the base model); cells are JSON strings, "-" if not asked."""
    cells: dict[str, dict[str, str]] = {}
    for (column, word), answer in zip(plan, answers, strict=True):
        cells.setdefault(prompt_for(word), {})[column] = json.dumps(answer, ensure_ascii=False)
    rows = [["prompt", *columns]] + [[json.dumps(p), *(row.get(c, "-") for c in columns)] for p, row in cells.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns) + 1)]
    return "\n".join(" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


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
