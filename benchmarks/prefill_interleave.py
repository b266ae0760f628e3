"""Inter-token latency of running decodes while long prompts arrive: chunked prefill on vs off, in one run.

    python benchmarks/prefill_interleave.py            # ~2-3 min on a shared 2-core box
    python benchmarks/prefill_interleave.py --quick    # one repetition, fewer steps

The ``benchmarks/mixed_batch.py`` model (~56M-parameter Llama, float32, SDPA) and 4 rank-16 all-linear PEFT
adapters. The engine runs in-process (no gRPC): ``--rows`` greedy rows with 64-token prompts decode ``--steps``
tokens each (spread over the adapters and the base); right after decode steps 10, 40, 70, ... a 448-token prompt
arrives (its arrival is tied to the step count through the engine's step hook, so every variant sees the same
load). Reported per ``prefill_chunk_tokens`` (0 = off: the newcomer is prefilled in one go between two decode
steps): inter-token latency of the running rows (p50 / p99 / max), the newcomers' time to first token, and the
wall time, and the decode steps that had prefill work before them (count, median decode-to-decode gap: less
sensitive to a loaded machine than a p99). Variants are interleaved over repetitions so machine noise hits
each alike; every variant's greedy tokens must equal the others' (the script stops if not).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from benchmarks.mixed_batch import build_base, save_adapters  # noqa: E402 - needs the path above (run as a script)

PROMPT = 64
LONG = 448
LONG_NEW = 8


class Rec:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.done = threading.Event()

    def emit(self, toks, finished, why, logprobs=None) -> None:
        self.times.append(time.perf_counter())
        self.tokens += toks
        if finished:
            self.done.set()

    def fail(self, exc) -> None:
        raise SystemExit(f"request failed: {exc}")


def run(model, lora, chunk: int, rows: int, steps: int, arrivals: list[int], adapters: int):
    from adapterfleet.worker.engine import Engine, GenerateJob
    from adapterfleet.worker.sampling import Sampling

    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 32000, (PROMPT,), generator=gen).tolist() for _ in range(rows)]
    longs = [torch.randint(1, 32000, (LONG,), generator=gen).tolist() for _ in arrivals]
    decodes = 0
    late: list[tuple[float, Rec]] = []
    steps_log: list[tuple[str, float]] = []

    def on_step(kind: str, n: int, tokens: int) -> None:
        nonlocal decodes
        steps_log.append((kind, time.perf_counter()))
        if kind != "decode":
            return
        decodes += 1
        for i, at in enumerate(arrivals):
            if decodes == at:
                rec = Rec()
                late.append((time.perf_counter(), rec))
                engine.submit(GenerateJob(longs[i], i % adapters, LONG_NEW, Sampling(), frozenset(), rec.emit,
                                          rec.fail))

    engine = Engine(model, lora, pad_id=0, device=torch.device("cpu"), max_batch=64, prefill_chunk_tokens=chunk,
                    on_step=on_step)
    recs = [Rec() for _ in range(rows)]
    for b, (p, rec) in enumerate(zip(prompts, recs, strict=True)):
        slot = b % (adapters + 1) - 1  # -1: the base
        engine.submit(GenerateJob(p, slot, steps, Sampling(), frozenset(), rec.emit, rec.fail))
    start = time.perf_counter()
    engine.start()
    for rec in recs:
        rec.done.wait()
    for _, rec in late:
        rec.done.wait()
    wall = time.perf_counter() - start
    engine.stop()
    itl = [b - a for rec in recs for a, b in zip(rec.times, rec.times[1:], strict=False)]
    ttft = [rec.times[0] - t0 for t0, rec in late]
    tokens = [rec.tokens for rec in recs] + [rec.tokens for _, rec in late]
    # decode-to-decode gaps with prefill work in them: how long a running row waited on a newcomer, per step
    stalls, last, saw_prefill = [], None, False
    for kind, t in steps_log:
        if kind == "decode":
            if last is not None and saw_prefill:
                stalls.append(t - last)
            last, saw_prefill = t, False
        else:
            saw_prefill = True
    return itl, ttft, wall, tokens, stalls


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--chunks", default="0,64,128,256,512")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    steps = 60 if args.quick else 130
    reps = 1 if args.quick else args.reps
    arrivals = list(range(10, steps - 20, 30))
    chunks = [int(c) for c in args.chunks.split(",")]
    adapters = 4

    from adapterfleet.worker.lora import AdapterWeights, LoraModel

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = build_base(0)
        names = [f"a{i}" for i in range(adapters)]
        save_adapters(base, names, Path(tmp), dora=False, seed=1)
        lora = LoraModel(base, max_slots=adapters)
        for i, name in enumerate(names):
            lora.install(i, AdapterWeights.from_dir(Path(tmp) / name))
        run(base, lora, 0, 2, 4, [2], adapters)  # warm-up
        results: dict[int, tuple[list[float], ...]] = {c: ([], [], [], []) for c in chunks}
        reference = None
        for _ in range(reps):
            for c in chunks:
                itl, ttft, wall, tokens, stalls = run(base, lora, c, args.rows, steps, arrivals, adapters)
                if reference is None:
                    reference = tokens
                elif tokens != reference:
                    raise SystemExit(f"prefill_chunk_tokens={c}: greedy tokens differ from the first variant's")
                results[c][0].extend(itl)
                results[c][1].extend(ttft)
                results[c][2].append(wall)
                results[c][3].extend(stalls)
    print(f"{args.rows} rows decoding {steps} tokens ({PROMPT}-token prompts), a {LONG}-token prompt arriving "
          f"after decode steps {arrivals}; {reps} rep(s), {args.threads} threads; greedy tokens identical across "
          "variants")
    print(f"{'prefill_chunk_tokens':>20} {'ITL p50 ms':>10} {'ITL p99 ms':>10} {'ITL max ms':>10} "
          f"{'TTFT p50 ms':>11} {'wall s':>7} {'stalled steps':>13} {'stalled step p50 ms':>19}")
    for c in chunks:
        itl, ttft, walls, stalls = results[c]
        print(f"{c or 'off':>20} {1e3 * pct(itl, 0.5):10.1f} {1e3 * pct(itl, 0.99):10.1f} {1e3 * max(itl):10.1f} "
              f"{1e3 * statistics.median(ttft):11.1f} {statistics.median(walls):7.2f} {len(stalls):13d} "
              f"{1e3 * statistics.median(stalls):19.1f}")


if __name__ == "__main__":
    main()
