"""`adapterfleet demo`: a local fleet, three toy adapters trained with PEFT, requests through the router.

The fleet's processes start first and boot (each imports torch) while this process trains the adapters; then
each is pushed as ``<task>@prod``, ``--requests`` greedy requests (the three adapters and the base model, on the
same prompts, some at once) go through the router, and the answers and the router's affinity statistics are
printed. Without ``--exit`` the fleet keeps serving until Ctrl-C. torch and peft are imported only in here, and
only when something must be trained: adapters are cached by their training recipe in the data directory
(:mod:`adapterfleet.demo.recipe`), so a second run trains nothing. ``--json``: the progress goes to stderr and one
JSON object (the fleet, the adapters, the answers, the router's stats) to stdout.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path

from adapterfleet.cli.admin import stats_text
from adapterfleet.cli.local_fleet import FleetConfig, LocalFleet, interrupt_on_sigterm
from adapterfleet.common.errors import FailedPrecondition, InvalidArgument, Unavailable
from adapterfleet.common.security_config import ClientSecurity
from adapterfleet.demo.recipe import AdapterCache, Recipe, TrainConfig, TrainResult, base_digest
from adapterfleet.demo.tasks import MAX_ANSWER_CHARS, TASKS, WORDS, prompt_for
from adapterfleet.sdk.fleet import FleetClient

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
    say = partial(print, file=sys.stderr if args.json else sys.stdout, flush=True)
    data = Path(args.data_dir)
    base = data / "demo-base"
    fleet = LocalFleet(FleetConfig(data, str(base), port=args.port, workers=args.workers))
    data.mkdir(parents=True, exist_ok=True)
    if not (base / "config.json").is_file():
        _import_training()  # fail early, with the fix, when PEFT is missing
    from adapterfleet.demo.base_model import build_demo_base  # noqa: PLC0415 - imports torch when it builds

    build_demo_base(base)
    cache = AdapterCache(data / "demo-adapters")
    digest = base_digest(base)
    recipes = [Recipe.of(task, digest, TrainConfig(steps=args.steps) if args.steps else TrainConfig())
               for task in TASKS]
    if not all(cache.get(r) for r in recipes) or cache.fingerprint(digest) is None:
        _import_training()
    interrupt_on_sigterm()
    served = False
    try:
        with fleet:
            cfg = fleet.cfg
            say(f"fleet starting: store {cfg.store_address}, {cfg.workers} workers, router {cfg.router_address} "
                f"(logs in {data}/*.log)")
            trained = _train_all(base, cache, recipes, fleet.check, say)
            fingerprint = cache.fingerprint(digest) or _fingerprint(base)
            cache.put_fingerprint(digest, fingerprint)
            fleet.wait_ready()
            pushed = _push_all(cfg.store_address, trained, fingerprint, say, cfg.client_security())
            refs = [p["ref"] for p in pushed]
            with FleetClient(cfg.router_address, security=cfg.client_security()) as router:
                _wait_for_workers(router, cfg.workers)
                plan = request_plan(args.requests, refs)
                t0 = time.perf_counter()
                answers = _ask_all(router, plan)
                say(f"\n{len(plan)} greedy requests through the router ({CONCURRENCY} at a time) in "
                    f"{time.perf_counter() - t0:.1f}s:\n")
                say(answer_table(plan, answers, [BASE, *refs]))
                stats = router.stats(timeout=10)
                say(f"\n{stats_text(stats)}")
            seconds = time.perf_counter() - started
            say(f"\ndemo ran in {seconds:.1f}s")
            if args.json:
                print(json.dumps({"fleet": fleet.summary(), "adapters": pushed, "router_stats": asdict(stats),
                                  "answers": [{"adapter": "" if c == BASE else c, "prompt": prompt_for(w), "answer": a}
                                              for (c, w), a in zip(plan, answers, strict=True)],
                                  "seconds": round(seconds, 3)}, sort_keys=True), flush=True)
            served = True
            if args.exit:
                return 0
            body = json.dumps({"model": refs[0], "prompt": prompt_for(WORDS[0]), "max_tokens": 12, "temperature": 0})
            say(f"\n{fleet.describe()}\ntry:    adapterfleet generate --router {cfg.router_address} "
                f"--adapter {refs[0]} --prompt '{prompt_for(WORDS[0])}'\n        curl -s {cfg.http_url}/completions "
                f"-H 'content-type: application/json' -H \"authorization: Bearer $ADAPTERFLEET_TOKEN\" -d '{body}'\n"
                "Ctrl-C stops the fleet.")
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


def _train_all(base: Path, cache: AdapterCache, recipes: list[Recipe], check_fleet: Callable[[], None],
               say: Callable[..., None]) -> list[TrainResult]:
    """Each task's adapter: from the cache when an earlier run trained it with the same recipe, else trained now
    (and cached)."""
    results = []
    for task, recipe in zip(TASKS, recipes, strict=True):
        check_fleet()  # a part that failed to start stops the demo now, not after all the training
        r = cache.get(recipe)
        if r is None:
            from adapterfleet.demo.train import train_adapter  # noqa: PLC0415 - imports torch and peft

            cache.root.mkdir(parents=True, exist_ok=True)
            r = train_adapter(base, task, cache.path(recipe), recipe.train)
            cache.put(recipe, r)
            say(f"trained {task.name:8s} ({task.description}): {recipe.train.steps} steps in {r.seconds:.1f}s, "
                f"loss {r.loss:.4f} -> {r.path}")
        else:
            say(f"reused  {task.name:8s} ({task.description}): trained earlier with the same recipe "
                f"({recipe.train.steps} steps, loss {r.loss:.4f}) -> {r.path}")
        results.append(r)
    return results


def _fingerprint(base: Path) -> str:
    """The base model's fingerprint, recorded in each manifest: workers on another base refuse the adapter."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415

    from adapterfleet.store.base_model import fingerprint  # noqa: PLC0415

    return fingerprint(AutoModelForCausalLM.from_pretrained(str(base), use_safetensors=True))


def _push_all(store: str, trained: list[TrainResult], fp: str, say: Callable[..., None],
              security: ClientSecurity) -> list[dict]:
    """Push each adapter as ``<task>@prod``; what was pushed, as JSON-ready dicts (``ref`` first)."""
    from adapterfleet.store.base_model import BaseModelIdentity  # noqa: PLC0415
    from adapterfleet.store.client import StoreClient  # noqa: PLC0415

    pushed = []
    with StoreClient(store, security=security) as client:
        for r in trained:
            out = client.push_dir(r.path, r.task, alias=ALIAS, base_model=BaseModelIdentity(fingerprint=fp))
            m = out.manifest
            say(f"{'pushed' if out.created else 'already stored:'} {r.task}@{m.version} {m.digest[:19]}... "
                f"({r.task}@{ALIAS} -> {m.version})")
            pushed.append({"ref": f"{r.task}@{ALIAS}", "key": str(m.key), "version": m.version,
                           "created": out.created, "cached": r.cached, "train_seconds": round(r.seconds, 3),
                           "loss": r.loss, "path": str(r.path)})
    return pushed


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
