"""What one batch's rows need from one slot-stack layout, worked out once per forward and shared by the wrappers.

A forward through a model with an all-linear adapter visits dozens of wrappers whose stacks have the same
:class:`.slot_stack.Layout`. The first of them builds a :class:`RowPlan` (local stack row per batch row, which
fields any row uses, index tensors for the gathers) and stores it on the :class:`.context.Rows`; the rest look it
up. Everything is derived from Python-side slot ids, so building a plan never waits on the device.
"""

from __future__ import annotations

import torch

from .context import Rows
from .slot_stack import SlotStack


class RowPlan:
    """The rows of one batch against one stack layout.

    ``local`` ([batch], long) is the local stack row of each batch row (0: no adapter here). ``single`` is that row
    when every batch row uses the same installed adapter (so wrappers can index one slot's tensors as views, no
    gather), else None. ``carried`` names the stack fields that some row's adapter has (a DoRA scale that no row
    needs is not applied).
    """

    def __init__(self, local: list[int], k: int, device: torch.device, carried: frozenset[str]):
        self.batch = len(local) * k
        self.carried = carried
        distinct = set(local)
        self.single = local[0] if len(distinct) == 1 and local[0] != 0 else None
        self.local = torch.tensor(local, dtype=torch.long).repeat_interleave(k).to(device)  # [batch]
        self._bags: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def bags(self, tokens: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``embedding_bag`` input and offsets: one bag per (row, token) of ``width`` consecutive table rows starting
        at ``local * width``, i.e. the row's own slice of a stack flattened to [(L + 1) * width, ...].

        # index [batch * tokens * width], offsets [batch * tokens]
        """
        key = (tokens, width)
        bags = self._bags.get(key)
        if bags is None:
            device = self.local.device
            start = self.local.repeat_interleave(tokens) * width  # [batch * tokens]
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
        plan = RowPlan(local, k, device, carried)
    rows.memo[key] = plan
    return plan
