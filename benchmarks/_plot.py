"""PNG plots for the benchmark scripts, drawn from the numbers a run has just measured.

matplotlib (Agg backend) is imported only when a plot is drawn: without it a script still prints its table, and
its plot is skipped with a one-line note (``pip install 'adapterfleet[bench]'``).

One style throughout: ours in blue, the comparison baseline (PEFT / raw boto3 / naive routing / bare proxy) in
grey beside it, a second baseline in orange, goals from benchmarks/RESULTS.md as green dashed lines, and ratios
written on the chart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_DIR = Path(__file__).resolve().parent / "plots"

OURS = "#1565c0"
BASE = "#8a8a8a"
ALT = "#ef6c00"
GOAL = "#2e7d32"
MUTED = "#c7c7c7"
DPI = 130
_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}


def add_argument(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--plot-dir", type=Path, default=DEFAULT_DIR,
                    help="where the PNG plot goes (default benchmarks/plots; needs matplotlib: "
                         "pip install 'adapterfleet[bench]')")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'adapterfleet[bench]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "figure.facecolor": "white", "axes.grid": True, "grid.alpha": 0.3, "axes.axisbelow": True,
        "axes.spines.top": False, "axes.spines.right": False, "font.size": 9, "axes.titlesize": 10,
        "legend.fontsize": 8, "legend.framealpha": 0.9,
    })
    return plt


def _save(plt, fig, plot_dir: Path, name: str) -> Path:
    plot_dir = Path(plot_dir)
    plot_dir.mkdir(parents=True, exist_ok=True)
    path = plot_dir / f"{name}.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    try:
        shown = path.resolve().relative_to(Path.cwd())
    except ValueError:
        shown = path
    print(f"plot: {shown}")
    return path


def _label_bars(ax, bars, fmt: str, *, inside: bool = False) -> None:
    for bar in bars:
        v = bar.get_height()
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, v), xytext=(0, -11 if inside else 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7,
                    color="white" if inside else "black", bbox=None if inside else _BOX)


# --- store_throughput.py ---------------------------------------------------------------------------------------


def store_throughput(plot_dir: Path, *, mb: float, rounds: int, seconds: dict[str, float],
                     goal: float = 0.80) -> Path | None:
    """Grouped bars of MB/s, push and pull: the store vs raw boto3 vs boto3's managed transfer.

    ``seconds``: median seconds of ``push``, ``put``, ``upload`` (upload_fileobj), ``pull``, ``get`` and
    ``download`` (download_fileobj). The goal line is ``goal`` x the raw call's MB/s.
    """
    plt = _pyplot()
    if plt is None:
        return None
    rate = {k: mb / s for k, s in seconds.items()}
    groups = [("push", "put", "upload", "put_object", "upload_fileobj"),
              ("pull (sha256-verified)", "get", "download", "get_object", "download_fileobj")]
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    width = 0.26
    for g, (_title, raw, managed, raw_name, managed_name) in enumerate(groups):
        ours = rate["push" if g == 0 else "pull"]
        xs = [g - width, g, g + width]
        bars = ax.bar(xs, [ours, rate[raw], rate[managed]], width * 0.95, color=[OURS, BASE, ALT],
                      label=["store (ours)", "raw boto3 (put_object / get_object)",
                             "boto3 managed transfer (upload_fileobj / download_fileobj)"] if g == 0 else None)
        _label_bars(ax, bars, "{:.1f}")
        ax.hlines(goal * rate[raw], g - 1.5 * width, g + 1.5 * width, colors=GOAL, linestyles="--", linewidth=1.4,
                  label=f"goal: store >= {goal:.2f}x raw" if g == 0 else None)
        top = max(ours, rate[raw], rate[managed])
        ax.annotate(f"store / {raw_name}: {ours / rate[raw]:.2f}x\nstore / {managed_name}: {ours / rate[managed]:.2f}x",
                    (g, top), xytext=(0, 16), textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([0, 1], [g[0] for g in groups])
    ax.set_ylabel("throughput, MB/s (higher is better)")
    ax.set_ylim(0, max(rate.values()) * 1.25)
    ax.set_title(f"Store throughput: {mb:.1f} MB adapter, median of {rounds} round{'s' * (rounds != 1)}, "
                 "S3 = moto on loopback")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    ax.grid(axis="x", visible=False)
    return _save(plt, fig, plot_dir, "store_throughput")


# --- cold_load.py -----------------------------------------------------------------------------------------------


def cold_load(plot_dir: Path, *, ms: dict[str, float], switch_ms: float, peft_switch_ms: float, loads: int,
              size_mb: float, switch_goal_ms: float = 1.0) -> Path | None:
    """Cold-load time per path (ms) with the goal line, and the cost of switching between resident adapters.

    ``ms``: medians of ``ours``, ``raw_get``, ``peft_load`` and ``naive`` (raw GET + PEFT load_adapter).
    ``switch_ms``: forward on B right after A minus forward on A after A; ``peft_switch_ms``: PEFT set_adapter.
    """
    plt = _pyplot()
    if plt is None:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 3.8), width_ratios=[2.3, 1])
    rows = [("ours: resolve + fetch + sha256\n+ parse + check + install", ms["ours"], OURS),
            ("naive: raw GET\n+ PEFT load_adapter", ms["naive"], BASE),
            ("  raw boto3 GET alone", ms["raw_get"], MUTED),
            ("  PEFT load_adapter alone\n  (local dir, unverified)", ms["peft_load"], MUTED)]
    ys = list(range(len(rows)))[::-1]
    bars = ax.barh(ys, [r[1] for r in rows], 0.6, color=[r[2] for r in rows])
    for bar, (_, v, _) in zip(bars, rows, strict=True):
        ax.annotate(f"{v:.1f} ms", (v, bar.get_y() + bar.get_height() / 2), xytext=(3, 0),
                    textcoords="offset points", va="center", fontsize=8)
    goal = 1.5 * ms["naive"] + 10
    ax.axvline(goal, color=GOAL, linestyle="--", linewidth=1.4)
    ax.annotate(f"goal: <= 1.5x naive + 10 ms = {goal:.0f} ms", (goal, 1.0), xycoords=ax.get_xaxis_transform(),
                xytext=(0, 3), textcoords="offset points", ha="center", va="bottom", fontsize=8, color=GOAL)
    ax.set_yticks(ys, [r[0] for r in rows])
    ax.set_xlabel("cold load, ms (median; lower is better)")
    ax.set_xlim(0, max(goal, *ms.values()) * 1.18)
    ax.set_title(f"Cold load of a {size_mb:.1f} MB rank-16 adapter (median of {loads})\n"
                 f"ours / naive = {ms['ours'] / ms['naive']:.2f}x", fontsize=9.5, pad=16)
    ax.grid(axis="y", visible=False)

    vals = [switch_ms, peft_switch_ms]
    bars = bx.bar([0, 1], vals, 0.55, color=[OURS, BASE])
    for bar, v, text in zip(bars, vals, (f"{switch_ms:+.2f} ms", f"{peft_switch_ms:.2f} ms"), strict=True):
        bx.annotate(text, (bar.get_x() + bar.get_width() / 2, v), xytext=(0, 2 if v >= 0 else -2),
                    textcoords="offset points", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    bx.axhline(switch_goal_ms, color=GOAL, linestyle="--", linewidth=1.4)
    bx.annotate(f"goal: <= {switch_goal_ms:g} ms", (0.5, switch_goal_ms), xytext=(0, 2), textcoords="offset points",
                ha="center", va="bottom", fontsize=8, color=GOAL, bbox=_BOX)
    bx.axhline(0, color="black", linewidth=0.6)
    bx.set_xticks([0, 1], ["ours: forward on B\nafter A, minus A after A", "PEFT set_adapter\n(alone)"])
    bx.set_ylabel("switch cost, ms (lower is better)")
    lo, hi = min(0.0, *vals), max([*vals, switch_goal_ms])
    bx.set_ylim(lo - 0.15 * (hi - lo), hi + 0.15 * (hi - lo))
    bx.set_title("Switching between two resident adapters", fontsize=9.5, pad=16)
    bx.grid(axis="x", visible=False)
    fig.tight_layout()
    return _save(plt, fig, plot_dir, "cold_load")


# --- mixed_batch.py ---------------------------------------------------------------------------------------------

MIXED_GOALS = {"decode": 1.3, "prefill": 1.1}  # ours / base, LoRA; RESULTS.md
DORA_GOAL = 1.5  # ours / base with DoRA adapters in the batch
PEFT_SPEEDUP_GOAL = 2.2  # ours vs peft-mixed, 32 adapters, decode


def mixed_batch(plot_dir: Path, *, regimes: dict[str, dict[tuple[str, str], float]], rows: int = 32,
                reps: dict[str, tuple[int, int]] | None = None) -> Path | None:
    """Step time / base step time against the adapters in the batch, ours vs PEFT, one panel per regime.

    ``regimes``: regime -> {(label, column): median ms}, with ``("base", "base")`` and labels such as ``"8 LoRA"``,
    ``"32 DoRA"``, ``"16 LoRA + 16 DoRA"``; columns ``ours``, ``peft-mixed``, ``peft-loop``.
    ``reps``: regime -> (repetitions of base/ours, of PEFT), for the titles.
    A panel whose ratios pass 4x gets a broken y axis: linear around the goals below, log above.
    """
    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    styles = {"ours": {"color": OURS, "marker": "o", "linestyle": "-", "label": "ours (LoraModel, one batch)"},
              "peft-mixed": {"color": BASE, "marker": "s", "linestyle": "--",
                             "label": "PEFT mixed batch (adapter_names=...)"},
              "peft-loop": {"color": ALT, "marker": "^", "linestyle": ":", "label": "PEFT set_adapter loop"}}
    fig = plt.figure(figsize=(max(6 * len(regimes), 10), 5.4))
    outer = fig.add_gridspec(1, len(regimes), wspace=0.22)
    handles = {}
    for k, (regime, med) in enumerate(regimes.items()):
        base = med[("base", "base")]
        labels = list(dict.fromkeys(label for label, _ in med if label != "base"))
        lora = [lb for lb in labels if lb.endswith(" LoRA")]
        other = [lb for lb in labels if lb not in lora]
        order = lora + other
        x = {lb: i for i, lb in enumerate(order)}
        ratio = {key: ms / base for key, ms in med.items() if key[0] != "base"}
        goal = MIXED_GOALS.get(regime)
        goals = [g for g in (goal if lora else None, DORA_GOAL if other else None) if g is not None]
        hi = max(ratio.values())
        if hi > 4:  # broken axis
            inner = outer[k].subgridspec(2, 1, height_ratios=[1, 1.5], hspace=0.08)
            top = fig.add_subplot(inner[0])
            ax = fig.add_subplot(inner[1], sharex=top)
            split = max([r for r in ratio.values() if r <= 1.8] + goals) + 0.15
            top.set_yscale("log")
            top.set_ylim(split, hi * 1.5)
            ticks = [t for t in (2, 3, 5, 10, 20, 50, 100, 200) if split < t < hi * 1.5]
            top.yaxis.set_major_locator(FixedLocator(ticks))
            top.yaxis.set_minor_locator(NullLocator())
            top.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
            top.tick_params(axis="x", bottom=False, labelbottom=False)
            top.spines["bottom"].set_visible(False)
            mark = {"marker": [(-1, -0.5), (1, 0.5)], "markersize": 10, "linestyle": "none", "color": "black",
                    "mec": "black", "mew": 1, "clip_on": False}
            top.plot([0], [0], transform=top.transAxes, **mark)
            ax.plot([0], [1], transform=ax.transAxes, **mark)
            ax.set_ylim(min([0.88] + [r * 0.92 for r in ratio.values()]), split)
            axes = [top, ax]
        else:
            top = ax = fig.add_subplot(outer[k])
            ax.set_ylim(min([0.88] + [r * 0.92 for r in ratio.values()]), max([hi, *goals]) * 1.12)
            axes = [ax]
        for a in axes:
            lo, up = a.get_ylim()
            for col, style in styles.items():
                xs = [x[lb] for lb in lora if (lb, col) in ratio]
                ys = [ratio[(lb, col)] for lb in lora if (lb, col) in ratio]
                a.plot(xs, ys, color=style["color"], linestyle=style["linestyle"])
                inside = [(xi, yi) for xi, yi in zip(xs, ys, strict=True) if lo <= yi <= up]  # no half-clipped markers
                a.plot([p[0] for p in inside], [p[1] for p in inside], color=style["color"], marker=style["marker"],
                       linestyle="")
                handles.setdefault(col, a.plot([], [], **style)[0])
                other_in = [(x[lb], ratio[(lb, col)]) for lb in other if lo <= ratio.get((lb, col), -1) <= up]
                a.plot([p[0] for p in other_in], [p[1] for p in other_in], color=style["color"],
                       marker="D" if col == "ours" else style["marker"], linestyle="")
            if goal is not None and lora:
                handles.setdefault("goal", a.hlines(goal, -0.3, x[lora[-1]] + 0.3, colors=GOAL, linestyles="--",
                                                    linewidth=1.4, label="goal for ours (RESULTS.md)"))
            if other:
                a.hlines(DORA_GOAL, x[other[0]] - 0.3, x[other[-1]] + 0.3, colors=GOAL, linestyles="--",
                         linewidth=1.4)
                a.axvline(len(lora) - 0.5, color=MUTED, linewidth=0.8)
            a.grid(axis="x", visible=False)
        if goal is not None and lora:
            ax.annotate(f"goal <= {goal:g}x", (x[lora[-1]] + 0.3, goal), xytext=(-2, 2), textcoords="offset points",
                        ha="right", va="bottom", fontsize=7.5, color=GOAL)
        if other:
            ax.annotate(f"DoRA goal <= {DORA_GOAL:g}x", (x[other[-1]] + 0.3, DORA_GOAL), xytext=(-2, 2),
                        textcoords="offset points", ha="right", va="bottom", fontsize=7.5, color=GOAL)
        ax.axhline(1.0, color="black", linewidth=0.6)
        for a in axes:  # values written beside their points: ours below, PEFT to the side
            for lb in order:
                r = ratio.get((lb, "ours"))
                if r is not None and a.get_ylim()[0] <= r <= a.get_ylim()[1]:
                    a.annotate(f"{r:.2f}x", (x[lb], r), xytext=(0, -14), textcoords="offset points", ha="center",
                               fontsize=7.5, color=OURS, bbox=_BOX)
            for col in ("peft-mixed", "peft-loop"):
                for lb in order:
                    r = ratio.get((lb, col))
                    if r is not None and a.get_ylim()[0] <= r <= a.get_ylim()[1]:
                        left = col == "peft-mixed"
                        a.annotate(f"{r:.2f}x", (x[lb], r), xytext=(-6 if left else 6, 0),
                                   textcoords="offset points", ha="right" if left else "left", va="center",
                                   fontsize=7, color=styles[col]["color"], bbox=_BOX)
        most = lora[-1] if lora else None
        if most and (most, "ours") in med and (most, "peft-mixed") in med:
            note = f"ours vs PEFT mixed at {most}: {med[(most, 'peft-mixed')] / med[(most, 'ours')]:.2f}x faster"
            if regime == "decode":
                note += f" (goal >= {PEFT_SPEEDUP_GOAL:g}x)"
            where = (ax, 0.03, "bottom") if top is not ax else (ax, 0.97, "top")  # clear of the PEFT lines
            where[0].text(0.98, where[1], note, transform=where[0].transAxes, ha="right", va=where[2], fontsize=8,
                     bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": MUTED})
        ax.set_xticks(range(len(order)), [lb.replace(" + ", " +\n") for lb in order])
        ax.set_xlim(-0.55, len(order) - 0.45)
        ax.set_xlabel(f"distinct adapters among the {rows} rows")
        ax.set_ylabel("step time / base model step time (lower is better)")
        if top is not ax:
            ax.yaxis.set_label_coords(-0.09, 0.85)
        what = "1 new token per row over a 64-token KV cache" if regime == "decode" else "128 new tokens per row"
        n = ""
        if reps and regime in reps:
            n = f"; medians of {reps[regime][0]} rep{'s' * (reps[regime][0] != 1)} (PEFT {reps[regime][1]})"
        top.set_title(f"{regime}: {what}\nbase model {base:.1f} ms/step{n}")
    fig.suptitle("Mixed-adapter batches on CPU (Llama-shaped 56M model, float32, rank 16 on all linear layers)",
                 fontsize=10.5, y=0.99)
    order_h = [c for c in (*styles, "goal") if c in handles]
    fig.legend([handles[c] for c in order_h], [handles[c].get_label() for c in order_h], loc="lower center",
               ncol=len(order_h), bbox_to_anchor=(0.5, -0.05))
    return _save(plt, fig, plot_dir, "mixed_batch")


# --- routing_sim.py ---------------------------------------------------------------------------------------------

POLICY_LABELS = {"ours": "ours\n(Placement)", "round-robin": "round-robin", "least-loaded": "least-loaded",
                 "resident-first": "resident-first\n(Ray Serve mux)"}


def routing_sim(plot_dir: Path, *, rows: list[tuple[str, float, float]], ideal: float, requests: int, seed: int,
                hit_goal: float = 0.95, load_goal: float = 1.25) -> Path | None:
    """Per policy: hit rate as % of the static ideal, and max/avg worker load, each against its goal.

    ``rows``: (policy, hit rate 0..1, max/avg load) per policy run; ``ideal``: the oracle's hit rate (0..1).
    """
    plt = _pyplot()
    if plt is None:
        return None
    names = [r[0] for r in rows]
    colors = [OURS if n == "ours" else BASE for n in names]
    ticks = [POLICY_LABELS.get(n, n) for n in names]
    xs = range(len(rows))
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4.3))

    pct = [100 * hit / ideal for _, hit, _ in rows]
    bars = ax.bar(xs, pct, 0.6, color=colors)
    for bar, (_, hit, _), p in zip(bars, rows, pct, strict=True):
        ax.annotate(f"{p:.1f}%\n({hit:.1%} hits)", (bar.get_x() + bar.get_width() / 2, p), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7.5,
                    bbox=_BOX)
    ax.axhline(100 * hit_goal, color=GOAL, linestyle="--", linewidth=1.4, label=f"goal: >= {hit_goal:.0%} of ideal")
    ax.set_xticks(list(xs), ticks)
    ax.set_ylim(0, 120)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("hit rate, % of the ideal (higher is better)")
    ax.set_title(f"Adapter hit rate (ideal: static top-512 oracle = {ideal:.2%})")
    ax.legend(loc="upper center")
    ax.grid(axis="x", visible=False)

    ratio = [r for _, _, r in rows]
    cap = max(1.5, max((r for r in ratio if r <= 2.0), default=1.0) + 0.2)  # bars above it are cut off
    bars = bx.bar(xs, [min(r, cap) - 1 for r in ratio], 0.6, bottom=1.0, color=colors)
    for bar, r in zip(bars, ratio, strict=True):
        off = r > cap
        bx.annotate(f"{r:.3f}\n(off scale)" if off else f"{r:.3f}", (bar.get_x() + bar.get_width() / 2, min(r, cap)),
                    xytext=(0, -4 if off else 2), textcoords="offset points", ha="center",
                    va="top" if off else "bottom", fontsize=7.5, color="white" if off else "black",
                    fontweight="bold" if off else None)
    bx.axhline(load_goal, color=GOAL, linestyle="--", linewidth=1.4, label=f"goal: <= {load_goal:g}")
    bx.axhline(1.0, color="black", linewidth=0.8)
    bx.set_xticks(list(xs), ticks)
    bx.set_ylim(0.95, cap + 0.05)
    bx.set_ylabel("max / avg worker load (lower is better)")
    bx.set_title("Load balance: E[busiest worker] / E[mean worker]\n(1.0 = perfect balance)")
    bx.legend(loc="upper left")
    bx.grid(axis="x", visible=False)
    fig.suptitle(f"Routing policies on one trace: 8 workers x 64 adapter slots, 1000 Zipf(1.1) adapters, "
                 f"{requests:,} requests, seed {seed}", fontsize=10.5)
    fig.tight_layout()
    return _save(plt, fig, plot_dir, "routing_sim")


# --- router_overhead.py -----------------------------------------------------------------------------------------


def router_overhead(plot_dir: Path, *, stats: dict[int, dict[str, tuple[float, float]]], rounds: int, tokens: int,
                    goal_p50: float = 1.0, goal_p99: float = 5.0, goal_at: int = 100) -> Path | None:
    """Latency added over direct (p50 and p99, ms) against concurrent streams: the router vs a bare Python proxy.

    ``stats``: concurrency -> {"direct" | "router" | "bare proxy": (p50 ms, p99 ms)} of whole-stream latency.
    """
    plt = _pyplot()
    if plt is None:
        return None
    ns = sorted(stats)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for q, (ax, goal) in enumerate(zip(axes, (goal_p50, goal_p99), strict=True)):
        name = ("p50", "p99")[q]
        direct = [stats[n]["direct"][q] for n in ns]
        router = [stats[n]["router"][q] - stats[n]["direct"][q] for n in ns]
        bare = [stats[n]["bare proxy"][q] - stats[n]["direct"][q] for n in ns]
        ax.plot(ns, router, color=OURS, marker="o", label="router adds (ours)")
        ax.plot(ns, bare, color=BASE, marker="s", linestyle="--", label="bare Python gRPC proxy adds")
        ax.plot(ns, direct, color=MUTED, marker=".", linestyle=":", label=f"direct {name} itself (reference)")
        for n, r, b in zip(ns, router, bare, strict=True):
            up = r >= b
            ax.annotate(f"{r:+.2f}", (n, r), xytext=(-5, 4 if up else -4), textcoords="offset points", ha="right",
                        va="bottom" if up else "top", fontsize=7.5, color=OURS, bbox=_BOX)
            ax.annotate(f"{b:+.2f}", (n, b), xytext=(5, -4 if up else 4), textcoords="offset points", ha="left",
                        va="top" if up else "bottom", fontsize=7.5, color=BASE, bbox=_BOX)
            ratio = f"{r / b:.2f}x" if b > 0 and r > 0 else "n/a"
            ax.text(n, 0.03, f"router / bare\n{ratio}", transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7.5, bbox=_BOX)
        ax.axhline(goal, color=GOAL, linestyle="--", linewidth=0.8, alpha=0.6)
        ax.plot([goal_at] if goal_at in ns else [], [goal] if goal_at in ns else [], marker="_", markersize=22,
                markeredgewidth=2, color=GOAL, linestyle="", label=f"goal at {goal_at} streams: <= {goal:g} ms")
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set_xscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.minorticks_off()
        ax.set_xlim(min(ns) / 2.2, max(ns) * 2.2)
        values = router + bare + direct + [goal]
        if min(values) > 0:
            scale = "log"
            ax.set_yscale("log")
            ax.set_ylim(min(values) / 6, max(values) * 4)
        else:  # noise can make an added latency negative at low load
            scale = "symlog"
            ax.set_yscale("symlog", linthresh=1.0)
            ax.set_ylim(min(values) * 1.5 - 2, max(values) * 4)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("concurrent Generate streams")
        ax.set_ylabel(f"{name} latency added over direct, ms ({scale}; lower is better)")
        ax.set_title(f"{name} added latency")
        ax.legend(loc="upper left")
    fig.suptitle(f"Router overhead: {tokens}-token streams to an instant stand-in worker, "
                 f"{rounds} round{'s' * (rounds != 1)}, loopback, each path its own process", fontsize=10.5)
    fig.tight_layout()
    return _save(plt, fig, plot_dir, "router_overhead")

