"""Mixed-adapter batches: the worker's per-row LoRA vs PEFT, on a Llama-shaped model on CPU.

    python benchmarks/mixed_batch.py                # full run (~4 min on a shared 2-core box)
    python benchmarks/mixed_batch.py --quick        # smoke run (~1.5 min), numbers too noisy to quote
    python benchmarks/mixed_batch.py --peft-dora    # also PEFT's set_adapter loop over 32 DoRA adapters (+~1.5 min)
    python benchmarks/mixed_batch.py --plot-dir DIR # where the PNG goes (default benchmarks/plots)

32 rows spread over 1, 8 and 32 distinct rank-16 adapters on all linear layers (row b -> adapter b % n), in both
serving regimes:

* prefill: 128 new tokens per row, logits of the last position only (what a server samples from);
* decode: one new token per row over a 64-token KV cache, full logits.

Compared per step (median over interleaved repetitions, so machine noise hits every variant alike):

* base:        the base model alone (no wrappers);
* ours:        ``LoraModel`` with every adapter installed (64 slots: 32 LoRA + 32 DoRA), rows set per step, on
               torch's ops; also "32 LoRA, native kernel", the worker's route where its native kernel
               (``lora/native.py``) is built (``--no-native-kernel``: no such row);
* peft-mixed:  ``PeftModel(..., adapter_names=[...])``, PEFT's own mixed batch (refuses DoRA);
* peft-loop:   ``set_adapter`` per distinct adapter and a forward over its rows (each group gets its own KV cache,
               split off untimed, which flatters PEFT: a server would have to gather and scatter them).

Adapters are made by PEFT (``get_peft_model``, random non-zero A, B and DoRA magnitudes from a fixed seed) and
saved with ``save_pretrained``; PEFT loads them back with ``load_adapter`` and ours with ``AdapterWeights.from_dir``,
so both sides run identical weights. Before timing, the script checks that ours and PEFT agree on logits (prefill and
decode) and stops if they do not. Threads are fixed (``--threads``, default 2) for every variant.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adapterfleet.worker.config import WorkerConfig
from adapterfleet.worker.lora import AdapterWeights, LoraModel, native
from adapterfleet.worker.model_host import contiguous_head

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "protos")]

from benchmarks import _plot  # noqa: E402 - needs the repo root the line above puts on sys.path (run as a script)

ROWS = 32
PREFILL_TOKENS = 128
CACHE_TOKENS = 64
RANK = 16
NO_ADAPTER = "no adapter (ours)"
KERNEL_LABEL = "32 LoRA, native kernel"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHECK_TOL = 1e-3
CHECK_ROWS = (0, 1, 2, 3, 30, 31)  # rows of the LoRA/DoRA mix compared with PEFT's set_adapter


def llama_config():
    """~56M parameters: 8 layers, hidden 512, GQA 8/4 heads, MLP 1408, vocab 32000 (untied head)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False, attn_implementation="sdpa",
    )


def build_base(seed: int):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config()).eval()


def save_adapters(base, names: list[str], out: Path, *, dora: bool, seed: int) -> None:
    """Save one PEFT adapter per name under ``out / name``: one PeftModel, its weights re-drawn before each save."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=RANK, lora_alpha=2 * RANK, target_modules=TARGETS, lora_dropout=0.0, use_dora=dora, init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    pm = get_peft_model(copy.deepcopy(base), config)
    params = dict(pm.named_parameters())
    magnitudes = {n: p.detach().clone() for n, p in params.items() if "lora_magnitude_vector" in n}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            for n, p in params.items():
                if n in magnitudes:  # keep DoRA magnitudes positive and near ||W + scaling * B @ A||
                    p.copy_(magnitudes[n] * (1.0 + 0.1 * torch.randn(p.shape, generator=gen)))
                elif "lora_" in n:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
            pm.save_pretrained(out / name)


def load_peft(base, dirs: dict[str, Path]):
    """A PeftModel on a copy of ``base`` holding every adapter of ``dirs`` (name -> saved directory)."""
    from peft import PeftModel

    (first, path), *rest = dirs.items()
    pm = PeftModel.from_pretrained(copy.deepcopy(base), path, adapter_name=first)
    for name, path in rest:
        pm.load_adapter(path, adapter_name=name)
    return pm.eval()


def cache_arg(model) -> str:
    """The forward's KV-cache keyword (``past_key_values`` was renamed ``cache`` in transformers 5.x)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def cache_of(output):
    return output["cache"] if "cache" in output else output["past_key_values"]


def new_cache(model, ids: torch.Tensor):
    """A DynamicCache of ``ids`` (run through ``model``)."""
    with torch.inference_mode():
        return cache_of(model(input_ids=ids, use_cache=True))


@dataclass
class Variant:
    label: str  # row of the table
    column: str  # base / ours / peft-mixed / peft-loop
    step: Callable[[], object]
    before: Callable[[], None] = lambda: None  # untimed, before every step (e.g. crop the KV cache)
    every: int = 1  # timed on every n-th repetition only (PEFT: slow, and far enough off not to need many)
    times: list[float] = field(default_factory=list)


def measure(variants: list[Variant], reps: int, warmup: int) -> None:
    """Interleave: every repetition runs each variant once (sparse ones: every n-th), in an order that rotates."""

    def runs(v: Variant, rep: int) -> bool:
        if rep < warmup:
            return rep == 0 or v.every == 1  # sparse variants warm up once
        return (rep - warmup) % v.every == 0

    gc.freeze()  # the models' objects: out of the collector's way, so the collect before each step is cheap
    n = len(variants)
    for rep in range(warmup + reps):
        for i in range(n):
            v = variants[(i + rep) % n]
            if not runs(v, rep):
                continue
            v.before()
            gc.collect()
            t = time.perf_counter()
            with torch.inference_mode():
                v.step()
            dt = time.perf_counter() - t
            if rep >= warmup:
                v.times.append(dt)


class Bench:
    def __init__(self, args, tmp: Path):
        self.args = args
        self.peft_every = {"decode": 1, "prefill": 1} if args.quick else {"decode": 3, "prefill": 2}
        gen = torch.Generator().manual_seed(1)
        self.base = build_base(seed=0)
        self.lora_names = [f"lora{i}" for i in range(32)]
        self.dora_names = [f"dora{i}" for i in range(32)]
        save_adapters(self.base, self.lora_names, tmp, dora=False, seed=2)
        save_adapters(self.base, self.dora_names, tmp, dora=True, seed=3)
        self.peft_lora = load_peft(self.base, {n: tmp / n for n in self.lora_names})
        # PEFT takes ~1 min to load 32 DoRA adapters here; without --peft-dora only those the check needs
        dora = self.dora_names if args.peft_dora else [self.mixed_names()[b] for b in CHECK_ROWS if b % 2]
        self.peft_dora = load_peft(self.base, {n: tmp / n for n in dora})
        self.ours = copy.deepcopy(self.base)
        contiguous_head(self.ours)  # the output head as the worker serves it (few-row GEMMs in a decode step)
        self.lm = LoraModel(self.ours, max_slots=64)
        self.kernel = None
        if not args.no_native_kernel:
            try:
                self.kernel = native.build(args.native_dir)
            except native.KernelUnavailable as exc:
                print(f"note: no native-kernel row, it is unavailable here: {exc}")
        self.slot = {}
        lora_bytes = []
        for i, name in enumerate(self.lora_names + self.dora_names):
            weights = AdapterWeights.from_dir(tmp / name)
            self.lm.install(i, weights)
            self.slot[name] = i
            if name in self.lora_names:
                lora_bytes += [t.reshape(-1).float() for m in weights.modules.values() for t in (m.lora_A, m.lora_B)
                               if t is not None]
        # The bytes a decode step with 32 distinct adapters must read beyond the base model's: every A and B of
        # every adapter, once. One contiguous float32 tensor, so that reading it is one streaming pass.
        self.adapter_bytes = torch.cat(lora_bytes)
        vocab = self.base.config.vocab_size
        self.prompt = torch.randint(0, vocab, (ROWS, PREFILL_TOKENS), generator=gen)  # [rows, 128]
        self.context = torch.randint(0, vocab, (ROWS, CACHE_TOKENS), generator=gen)  # [rows, 64]
        self.next_ids = torch.randint(0, vocab, (ROWS, 1), generator=gen)  # [rows, 1]
        self.cache_arg = cache_arg(self.base)
        self.cache = new_cache(self.base, self.context)  # shared by base, ours, peft-mixed (cropped each step)

    # --- one step of each kind -------------------------------------------------------------------------------

    def forward(self, model, regime: str, rows: slice | list[int] = slice(None), cache=None, **kw):
        if regime == "prefill":
            return model(input_ids=self.prompt[rows], use_cache=True, logits_to_keep=1, **kw)
        return model(input_ids=self.next_ids[rows], use_cache=True, **{self.cache_arg: cache}, **kw)

    def crop(self, caches) -> Callable[[], None]:
        return lambda: [c.crop(CACHE_TOKENS - c.get_seq_length()) for c in caches]

    def base_variant(self, regime: str, label: str) -> Variant:
        return Variant(label, "base", lambda: self.forward(self.base, regime, cache=self.cache),
                       self.crop([self.cache]))

    def ours_variant(self, regime: str, label: str, names: list[str], kernel=None) -> Variant:
        slots = [self.slot[n] for n in names]

        def step():
            self.lm.use_kernel(kernel)  # torch's ops unless this variant is the native kernel's
            with self.lm.rows(slots):  # a fresh Rows per step, as a continuously batching server would
                return self.forward(self.ours, regime, cache=self.cache)

        return Variant(label, "ours", step, self.crop([self.cache]))

    def ours_base_variant(self, regime: str) -> Variant:
        """The same wrapped model with no adapter on any row: the worker's own base path."""

        def step():
            self.lm.use_kernel(None)
            with self.lm.rows([-1] * ROWS):
                return self.forward(self.ours, regime, cache=self.cache)

        return Variant(NO_ADAPTER, "ours", step, self.crop([self.cache]))

    def peft_mixed_variant(self, regime: str, label: str, names: list[str]) -> Variant:
        return Variant(label, "peft-mixed",
                       lambda: self.forward(self.peft_lora, regime, cache=self.cache, adapter_names=names),
                       self.crop([self.cache]), every=self.peft_every[regime])

    def peft_loop_variant(self, regime: str, label: str, names: list[str], pm) -> Variant:
        groups = {n: [b for b in range(ROWS) if names[b] == n] for n in dict.fromkeys(names)}
        caches = {n: new_cache(self.base, self.context[rows]) for n, rows in groups.items()} if regime == "decode" \
            else {}

        def step():
            for n, rows in groups.items():
                pm.set_adapter(n)
                self.forward(pm, regime, rows, cache=caches.get(n))

        return Variant(label, "peft-loop", step, self.crop(list(caches.values())), every=self.peft_every[regime])

    # --- check -------------------------------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Max |ours - PEFT| on logits: prefill (all positions) and one decode step, LoRA and a LoRA/DoRA mix."""
        lines = []
        names = [self.lora_names[b % 32] for b in range(ROWS)]
        with torch.inference_mode():
            with self.lm.rows([self.slot[n] for n in names]):
                ours_pre = self.ours(input_ids=self.context, use_cache=True)
                ours_dec = self.ours(input_ids=self.next_ids, **{self.cache_arg: cache_of(ours_pre)}).logits
            peft_pre = self.peft_lora(input_ids=self.context, use_cache=True, adapter_names=names)
            peft_dec = self.peft_lora(
                input_ids=self.next_ids, **{self.cache_arg: cache_of(peft_pre)}, adapter_names=names
            ).logits
            diffs = [(ours_pre.logits - peft_pre.logits).abs().max().item(), (ours_dec - peft_dec).abs().max().item()]
            lines.append(f"32 LoRA vs peft-mixed: prefill {diffs[0]:.2e}, decode {diffs[1]:.2e}")
            base_delta = (ours_pre.logits - self.base(input_ids=self.context).logits).abs().max().item()
            lines.append(f"  (adapters move the logits by up to {base_delta:.2e}, so the check is not vacuous)")
            # half LoRA / half DoRA: PEFT cannot mix DoRA, so compare with set_adapter on a few rows
            mix = self.mixed_names()
            with self.lm.rows([self.slot[n] for n in mix]):
                mix_pre = self.ours(input_ids=self.context, use_cache=True)
                mix_dec = self.ours(input_ids=self.next_ids, **{self.cache_arg: cache_of(mix_pre)}).logits
            worst = [0.0, 0.0]
            for b in CHECK_ROWS:
                pm = self.peft_dora if mix[b].startswith("dora") else self.peft_lora
                pm.set_adapter(mix[b])
                ref_pre = pm(input_ids=self.context[b : b + 1], use_cache=True)
                ref_dec = pm(input_ids=self.next_ids[b : b + 1], **{self.cache_arg: cache_of(ref_pre)}).logits
                worst[0] = max(worst[0], (mix_pre.logits[b : b + 1] - ref_pre.logits).abs().max().item())
                worst[1] = max(worst[1], (mix_dec[b : b + 1] - ref_dec).abs().max().item())
            diffs += worst
            lines.append(f"16 LoRA + 16 DoRA vs peft set_adapter ({len(CHECK_ROWS)} rows): prefill {worst[0]:.2e}, "
                         f"decode {worst[1]:.2e}")
        if max(diffs) > CHECK_TOL:
            raise SystemExit(f"ours and PEFT disagree (max abs diff {max(diffs):.2e} > {CHECK_TOL}); not timing")
        return lines

    def mixed_names(self) -> list[str]:
        return [(self.lora_names if b % 2 == 0 else self.dora_names)[b // 2 % 32] for b in range(ROWS)]

    # --- the variants of one regime ---------------------------------------------------------------------------

    def variants(self, regime: str) -> list[Variant]:
        out = [self.base_variant(regime, "base"), self.ours_base_variant(regime)]
        for n in (1, 8, 32):
            names = [self.lora_names[b % n] for b in range(ROWS)]
            label = f"{n} LoRA"
            out += [self.ours_variant(regime, label, names), self.peft_mixed_variant(regime, label, names),
                    self.peft_loop_variant(regime, label, names, self.peft_lora)]
        dora = [self.dora_names[b % 32] for b in range(ROWS)]
        out.append(self.ours_variant(regime, "32 DoRA", dora))
        if self.args.peft_dora:
            out.append(self.peft_loop_variant(regime, "32 DoRA", dora, self.peft_dora))
        out.append(self.ours_variant(regime, "16 LoRA + 16 DoRA", self.mixed_names()))
        if regime == "decode":  # the floor under "32 LoRA": one streaming read of those adapters' bytes
            out.append(Variant("32 LoRA", "bytes", lambda: self.adapter_bytes.sum()))
        if self.kernel is not None:  # the worker's route (prefill and decode) where its native kernel is built
            out.append(self.ours_variant(regime, KERNEL_LABEL, [self.lora_names[b % 32] for b in range(ROWS)],
                                         kernel=self.kernel))
        return out


def table(regime: str, variants: list[Variant]) -> list[str]:
    """Markdown table of median step times, ratios to the base model and ours' speed-up over PEFT."""
    med = {(v.label, v.column): statistics.median(v.times) * 1e3 for v in variants}
    low = {(v.label, v.column): min(v.times) * 1e3 for v in variants}
    base = med[("base", "base")]
    labels = list(dict.fromkeys(v.label for v in variants if v.label != "base"))

    def cell(label, col, fmt):
        t = med.get((label, col))
        return "-" if t is None else fmt(t)

    def speedup(label, col):
        return cell(label, col, lambda t: f"{t / med[(label, 'ours')]:.2f}x")

    counts = {v.column: len(v.times) for v in variants}
    peft = min(counts.get("peft-mixed", 0), counts.get("peft-loop", 0))
    title = f"### {regime}: base model {base:.1f} ms/step"
    lines = [
        f"{title} (medians of {counts['base']} interleaved repetitions, PEFT of {peft})",
        "",
        (
            "| adapters | ours ms | peft-mixed ms | peft-loop ms | ours/base | peft-mixed/base | peft-loop/base "
            "| ours vs peft-mixed | ours vs peft-loop |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in labels:
        ms = [cell(label, c, lambda t: f"{t:.1f}") for c in ("ours", "peft-mixed", "peft-loop")]
        ratios = [cell(label, c, lambda t: f"{t / base:.2f}x") for c in ("ours", "peft-mixed", "peft-loop")]
        lines.append(f"| {label} | {' | '.join(ms)} | {' | '.join(ratios)} | {speedup(label, 'peft-mixed')} "
                     f"| {speedup(label, 'peft-loop')} |")
    fastest = ", ".join(f"{label} {low[(label, 'ours')] / low[('base', 'base')]:.2f}x" for label in labels)
    floor = med.get(("32 LoRA", "bytes"))
    own = med.get((NO_ADAPTER, "ours"))
    lines_own = [] if own is None else [
        "",
        f"against ours with no adapter on any row ({own:.1f} ms/step, the worker's own base path): "
        + ", ".join(f"{label} {med[(label, 'ours')] / own:.2f}x" for label in labels if label != NO_ADAPTER),
    ]
    if floor is not None:
        lines_floor = [""]
        for label in ("32 LoRA", KERNEL_LABEL):
            if (label, "ours") in med:
                extra = med[(label, "ours")] - (base if own is None else own)
                lines_floor.append(
                    f"{label} adds {extra:.1f} ms/step to ours with no adapter; one streaming read of those 32 "
                    f"adapters' A and B (the bytes a step must read) takes {floor:.1f} ms: added / bytes floor = "
                    f"{extra / floor:.2f}x")
    else:
        lines_floor = []
    spread = max(
        (statistics.quantiles(v.times, n=4)[2] / statistics.median(v.times) for v in variants if len(v.times) > 1),
        default=1.0,
    )
    lines += [
        "",
        f"ours/base on the fastest repetition of each (noise only ever adds time): {fastest}",
        f"noise gauge: worst upper-quartile / median over the variants = {spread:.2f}",
        *lines_own,
        *lines_floor,
    ]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~1 min)")
    ap.add_argument("--peft-dora", action="store_true",
                    help="also time PEFT's set_adapter loop over 32 DoRA adapters (loading them takes PEFT ~1 min)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, the same for every variant")
    ap.add_argument("--native-dir", default=WorkerConfig.native_dir,
                    help="where the worker's native LoRA kernel is built (and found; the worker's default)")
    ap.add_argument("--no-native-kernel", action="store_true", help="no row for the native kernel")
    ap.add_argument("--decode-reps", type=int, default=None)
    ap.add_argument("--prefill-reps", type=int, default=None)
    _plot.add_argument(ap)
    args = ap.parse_args()
    decode_reps = args.decode_reps or (3 if args.quick else 30)
    prefill_reps = args.prefill_reps or (1 if args.quick else 8)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
    params = sum(p.numel() for p in bench.base.parameters()) / 1e6
    print(f"model: Llama-shaped, {params:.1f}M params, float32, {torch.get_num_threads()} threads; "
          f"{ROWS} rows, rank {RANK} on {', '.join(TARGETS)}; setup {time.perf_counter() - start:.0f} s")
    for line in bench.check():
        print("check:", line)
    warmups = (1, 0) if args.quick else (3, 1)
    medians, reps_of = {}, {}  # for the plot: regime -> {(label, column): median ms}, (reps, PEFT reps)
    for regime, reps, warmup in (("decode", decode_reps, warmups[0]), ("prefill", prefill_reps, warmups[1])):
        variants = bench.variants(regime)
        measure(variants, reps, warmup)
        print()
        print("\n".join(table(regime, variants)))
        if regime == "decode":
            print(f"(those bytes: {bench.adapter_bytes.numel() * 4 / 1e6:.0f} MB of float32 A and B)")
        medians[regime] = {(v.label, v.column): statistics.median(v.times) * 1e3 for v in variants}
        counts = {v.column: len(v.times) for v in variants}
        reps_of[regime] = (counts["base"], min(counts.get("peft-mixed", 0), counts.get("peft-loop", 0)))
    print(f"\ntotal {time.perf_counter() - start:.0f} s")
    _plot.mixed_batch(args.plot_dir, regimes=medians, rows=ROWS, reps=reps_of)


if __name__ == "__main__":
    main()
