"""Few-row GEMMs: ``F.linear`` (what PyTorch and transformers run) against the transposed form
(``adapterfleet.worker.lora.few_rows``) and the weights prepacked for oneDNN that the worker now serves from
(``adapterfleet.worker.lora.packed``), side by side in one process, then whole decode steps of the worker's model
with each of the three, interleaved.

    python benchmarks/few_rows.py [--reps 6] [--rows 1,2,4,8,16,32,64]

Model: the ``benchmarks/mixed_batch.py`` Llama (56M parameters, float32, seed 0) and 32 rank-16 all-linear adapters
made by PEFT. GEMMs: every weight shape of that model, 8 distinct weights per shape so they are read from memory,
not cache. Decode steps: B rows of 64-token prompts, one token each, the KV cache cropped back after every step;
"32 adapters" puts row b on adapter b % 32 (every row a different adapter up to 32 rows).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

import copy  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from adapterfleet.worker.lora import AdapterWeights, LoraModel, few_rows, packed  # noqa: E402
from adapterfleet.worker.model_host import contiguous_head  # noqa: E402
from benchmarks.mixed_batch import build_base, save_adapters  # noqa: E402

SHAPES = {"q/o 512->512": (512, 512), "k/v 512->256": (512, 256), "gate/up 512->1408": (512, 1408),
          "down 1408->512": (1408, 512), "head 512->32000": (512, 32000)}
ADAPTERS = 32


def timed(fn, reps: int, inner: int) -> float:
    """Median seconds per call of ``fn`` over ``reps`` groups of ``inner`` calls (after two warm-up calls)."""
    fn()
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        out.append((time.perf_counter() - t) / inner)
    return statistics.median(out)


def gemm_table(rows: list[int], reps: int) -> None:
    print("| weight | rows | F.linear ms | (W @ x.T).T ms | packed ms | transposed / F.linear | packed / F.linear |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for label, (n_in, n_out) in SHAPES.items():
        copies = 2 if n_out > 4096 else 8
        weights = [torch.randn(n_out, n_in, generator=gen) for _ in range(copies)]
        for m in rows:
            x = torch.randn(m, n_in, generator=gen)
            plain = timed(lambda x=x, ws=weights: [F.linear(x, w) for w in ws], reps, 3) / copies
            mine = timed(lambda x=x, ws=weights: [few_rows.linear_t(x, w).contiguous() for w in ws], reps, 3) / copies
            packs = [packed.Packed(w, None, batch_hint=64) for w in weights]
            onednn = timed(lambda x=x, ps=packs: [p.linear(x) for p in ps], reps, 3) / copies
            print(f"| {label} | {m} | {plain * 1e3:.3f} | {mine * 1e3:.3f} | {onednn * 1e3:.3f} | "
                  f"{mine / plain:.2f}x | {onednn / plain:.2f}x |", flush=True)


def decode_table(models: dict[str, tuple[torch.nn.Module, LoraModel]], rows: list[int], reps: int) -> None:
    """``models``: "plain" (F.linear, or the transposed form) and "packed", each with the same adapters."""
    from transformers import DynamicCache

    gen = torch.Generator().manual_seed(1)

    def step(model, lora, slots, cache) -> None:
        ids = torch.randint(1, 32000, (len(slots), 1), generator=gen)
        with torch.inference_mode(), lora.rows(slots):
            model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.crop(-1)

    variants = {"F.linear": ("plain", 1), "transposed": ("plain", 64), "packed": ("packed", 64)}
    print("| rows | adapters | F.linear ms/step | transposed ms/step | packed ms/step | transposed / F.linear | "
          "packed / F.linear |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for b in rows:
        for adapters in (False, True):
            slots = [i % ADAPTERS for i in range(b)] if adapters else [-1] * b
            prompt = torch.randint(1, 32000, (b, 64), generator=gen)
            caches = {}
            for name, (model, lora) in models.items():
                caches[name] = DynamicCache()
                with torch.inference_mode(), lora.rows(slots):
                    model(input_ids=prompt, past_key_values=caches[name], use_cache=True, logits_to_keep=1)
            times: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(reps):  # interleaved, so machine noise hits every variant alike
                for v, (name, max_rows) in variants.items():
                    few_rows.MAX_ROWS = max_rows
                    model, lora = models[name]
                    times[v].append(timed(lambda m=model, lo=lora, s=slots, c=caches[name]: step(m, lo, s, c), 1, 3))
            few_rows.MAX_ROWS = 64
            med = {v: statistics.median(t) for v, t in times.items()}
            lin = med["F.linear"]
            print(f"| {b} | {f'{min(b, ADAPTERS)} distinct' if adapters else 'none'} | {lin * 1e3:.1f} | "
                  f"{med['transposed'] * 1e3:.1f} | {med['packed'] * 1e3:.1f} | {med['transposed'] / lin:.2f}x | "
                  f"{med['packed'] / lin:.2f}x |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, {args.threads} threads, float32\n\n### GEMMs\n")
    gemm_table(rows, args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        base = build_base(seed=0)
        names = [f"a{i:02d}" for i in range(ADAPTERS)]
        save_adapters(base, names, Path(tmp), dora=False, seed=0)
        contiguous_head(base)  # what the worker's ModelHost does to the model it serves
        onednn = copy.deepcopy(base)
        packed.pack_linears(onednn, batch_hint=64)  # and, by default, this
        models = {}
        for label, model in (("plain", base), ("packed", onednn)):
            lora = LoraModel(model, max_slots=ADAPTERS)
            for i, name in enumerate(names):
                lora.install(i, AdapterWeights.from_dir(Path(tmp) / name))
            models[label] = (model, lora)
        print("\n### Decode steps (the worker's model and LoRA layers)\n")
        decode_table(models, rows, args.reps)


if __name__ == "__main__":
    main()
