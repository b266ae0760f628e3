"""What one batch's rows need from one slot-stack layout, worked out once per forward and shared by the wrappers.

A forward through a model with an all-linear adapter visits dozens of wrappers whose stacks have the same
:class:`.slot_stack.Layout`. The first of them builds a :class:`RowPlan` (local stack row per batch row, which
fields any row uses, index tensors for the gathers) and stores it on the :class:`.context.Rows`; the rest look it
up. Everything is derived from Python-side slot ids, so building a plan never waits on the device.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import torch

from .context import Rows
from .slot_stack import SlotStack


@dataclass(frozen=True)
class Grouped:
    """A few-token batch laid out by stack row, so the low-rank term runs as two ``bmm`` over a *view* of the
    stacks (stack rows ``lo .. lo + span - 1``), reading each adapter's A and B once and gathering nothing.

    Items are the batch's (row, token) pairs in order. Item ``used[j]`` (all items when ``used`` is None) goes to
    padded position ``pos[j]`` of a [span * per, ...] layout: ``per`` places for each stack row. ``identity``: no
    padding and no reordering (every item on its own adapter, items in stack-row order): x and the output are viewed
    as they are.
    """

    lo: int
    span: int
    per: int
    pos: torch.Tensor  # [len(used)] long
    used: torch.Tensor | None  # [n] long: the items that carry an adapter here; None: every item
    identity: bool


@dataclass(frozen=True)
class Part:
    """Items ``start:end`` of a fused step's per-token rows: one run on stack row ``row`` (0: no adapter), computed
    as one matmul on that adapter's A and B, or (``plan`` set) a stretch of short runs with a plan of its own. Parts
    serve torch's ops only: where the native kernel is loaded it takes the whole step in one call."""

    start: int
    end: int
    row: int = 0
    plan: RowPlan | None = None


# In a fused step (per-token rows), a run of at least this many consecutive tokens on one stack row (a prefill
# chunk's row) is its own matmul; shorter runs (decode rows) go through the few-token routes together. Measured on
# the 2-core box (a 32-row decode step fused with a 64-token prefill, 32 adapters): the whole step through
# embedding_bag spent 14.6 ms in the low-rank terms, against 9.5 ms as separate forwards.
RUN_MIN = 8

# When the used stack rows have more holes than this fraction of their span, or the padded layout holds more than
# PAD_LIMIT places per item, a grouped step would read (or multiply) too much that no row needs: embedding_bag then.
HOLE_LIMIT, PAD_LIMIT = 0.25, 2


class RowPlan:
    """The rows of one batch against one stack layout.

    ``local`` ([batch], long) is the local stack row of each batch row (0: no adapter here). ``single`` is that row
    when every batch row uses the same installed adapter (so wrappers can index one slot's tensors as views, no
    gather), else None. ``carried`` names the stack fields that some row's adapter has (a DoRA scale that no row
    needs is not applied).
    """

    def __init__(self, local: list[int], k: int, device: torch.device, carried: frozenset[str], flat: bool = False):
        self.batch = len(local) * k
        self.carried = carried
        distinct = set(local)
        self.single = local[0] if len(distinct) == 1 and local[0] != 0 else None
        self.local = torch.tensor(local, dtype=torch.long).repeat_interleave(k).to(device)  # [batch]
        self._rows = [row for row in local for _ in range(k)]  # self.local, as Python ints
        self._bags: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._grouped: dict[int, Grouped | None] = {}
        self._items: dict[int, torch.Tensor] = {}
        self._flat = flat and k == 1  # per-token rows of a fused step

    @functools.cached_property
    def parts(self) -> list[Part] | None:
        """A fused step's per-token rows cut into :class:`Part` s (None: the batch as a whole). Worked out on first
        use: only torch's ops ask; where the native kernel is loaded it takes the step whole."""
        return _parts(self._rows, self.local.device, self.carried) if self._flat else None

    def grouped(self, tokens: int) -> Grouped | None:
        """The by-stack-row layout of this batch at ``tokens`` per row, or None where it would waste more than
        embedding_bag costs (``HOLE_LIMIT``, ``PAD_LIMIT``). Measured on the 2-core AVX-512 box with 32 rank-16
        adapters on every linear of the 56M Llama, one decode step's low-rank terms: 7.7 ms through embedding_bag,
        5.7 ms as bmm over stack views, against 5.4 ms to stream the same 161 MB once (``benchmarks/RESULTS.md``)."""
        if tokens in self._grouped:
            return self._grouped[tokens]
        items = [row for row in self._rows for _ in range(tokens)]
        counts = Counter(row for row in items if row)
        plan = None
        if counts:
            lo, hi = min(counts), max(counts)
            span, per, n_used = hi - lo + 1, max(counts.values()), sum(counts.values())
            if span - len(counts) <= HOLE_LIMIT * span and span * per <= PAD_LIMIT * n_used:
                placed: Counter[int] = Counter()
                pos, used = [], []
                for i, row in enumerate(items):
                    if row:
                        pos.append((row - lo) * per + placed[row])
                        placed[row] += 1
                        used.append(i)
                device = self.local.device
                every = n_used == len(items)
                plan = Grouped(lo, span, per, torch.tensor(pos, dtype=torch.long, device=device),
                               None if every else torch.tensor(used, dtype=torch.long, device=device),
                               identity=every and per == 1 and span == len(items) and pos == list(range(span)))
        self._grouped[tokens] = plan
        return plan

    def items(self, tokens: int) -> torch.Tensor:
        """The local stack row of each (row, token) item at ``tokens`` per row.  # [batch * tokens] long"""
        if tokens == 1:
            return self.local
        items = self._items.get(tokens)
        if items is None:
            items = self._items[tokens] = self.local.repeat_interleave(tokens)
        return items

    def bags(self, tokens: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``embedding_bag`` input and offsets: one bag per (row, token) of ``width`` consecutive table rows starting
        at ``local * width``, i.e. the row's own slice of a stack flattened to [(L + 1) * width, ...].

        # index [batch * tokens * width], offsets [batch * tokens]
        """
        key = (tokens, width)
        bags = self._bags.get(key)
        if bags is None:
            device = self.local.device
            start = self.items(tokens) * width  # [batch * tokens]
            index = (start.unsqueeze(1) + torch.arange(width, device=device)).reshape(-1)
            offsets = torch.arange(0, start.numel() * width, width, device=device)
            bags = self._bags[key] = (index, offsets)
        return bags


def plan_for(rows: Rows | None, stack: SlotStack, batch: int, device: torch.device) -> RowPlan | None:
    """The plan of ``rows`` for ``stack`` (cached on ``rows`` per layout), or None when no row uses the stack."""
    if rows is None or not stack.slots:
        return None
    key = (stack.layout, batch, device)
    try:
        return rows.memo[key]
    except KeyError:
        pass
    plan = None
    if not rows.present.isdisjoint(stack.slots):
        k = rows.expansion(batch)
        local_of = {slot: i for i, slot in enumerate(stack.order, start=1)}
        local = [local_of.get(slot, 0) for slot in rows.slots]
        used = rows.present & stack.slots
        carried = frozenset(name for name, slots in stack.has.items() if not slots.isdisjoint(used))
        plan = RowPlan(local, k, device, carried, flat=rows.flat)
    rows.memo[key] = plan
    return plan


def _parts(local: list[int], device: torch.device, carried: frozenset[str]) -> list[Part] | None:
    """Per-token rows cut into runs of at least RUN_MIN tokens on one stack row and the stretches between them, or
    None when there is no such run beside other rows (the batch as a whole is then the better plan)."""
    runs, start = [], 0
    for i in range(1, len(local) + 1):
        if i == len(local) or local[i] != local[start]:
            runs.append((start, i))
            start = i
    parts: list[Part] = []
    stretch = None  # start of the current stretch of short runs
    for begin, end in runs:
        if end - begin >= RUN_MIN:
            if stretch is not None:
                parts.append(_stretch(local, stretch, begin, device, carried))
                stretch = None
            parts.append(Part(begin, end, row=local[begin]))
        elif stretch is None:
            stretch = begin
    if stretch is not None:
        parts.append(_stretch(local, stretch, len(local), device, carried))
    return parts if len(parts) > 1 else None


def _stretch(local: list[int], begin: int, end: int, device: torch.device, carried: frozenset[str]) -> Part:
    rows = local[begin:end]
    return Part(begin, end, plan=RowPlan(rows, 1, device, carried) if any(rows) else None)
