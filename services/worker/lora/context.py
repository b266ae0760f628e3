"""Which adapter slot each row of a batch uses, for the duration of a forward (or a whole ``generate``).

Every LoRA wrapper of one model holds the same :class:`RowContext`. A caller sets the rows around the call::

    with ctx.rows([2, -1, 0]):        # row 0 -> slot 2, row 1 -> base model, row 2 -> slot 0
        model.generate(input_ids, ...)

The current rows live in a ``ContextVar``, so two threads (or asyncio tasks) running forwards on the same model
each see their own rows. No rows set means every row runs on the base model.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from .native import LowRankKernel

NO_ADAPTER = -1


class Rows:
    """The slots of one batch: ``slots[b]`` is row b's slot, or -1 for the base model.

    A forward may see ``k * len(slots)`` rows: ``generate`` expands each row ``k`` times next to each other
    (``repeat_interleave``) for beams / ``num_return_sequences``, and flattening [batch, tokens] also keeps the rows
    of one sequence together. Row b of such a batch uses the slot of row ``b // k``.

    ``flat``: the slots are per *token* of a forward whose batch is one row of many sequences' tokens laid end to
    end (the engine's fused step, ``adapterfleet.worker.ragged``): a wrapper views its input [1, tokens, ...] as
    [tokens, 1, ...] (:meth:`per_token`), so each token is a row with its own slot.
    """

    def __init__(self, slots: Sequence[int], max_slots: int, flat: bool = False):
        slots = tuple(int(s) for s in slots)
        if not slots:
            raise ValueError("rows need at least one slot id (use -1 for a row on the base model)")
        bad = [s for s in slots if not (s == NO_ADAPTER or 0 <= s < max_slots)]
        if bad:
            raise ValueError(f"slot ids {bad} are out of range; use 0..{max_slots - 1}, or -1 for no adapter")
        self.slots = slots
        self.flat = flat
        self.present = frozenset(s for s in slots if s != NO_ADAPTER)
        self._rows_of: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self.memo: dict = {}  # per-forward values the wrappers share (see .plan.plan_for)

    def __len__(self) -> int:
        return len(self.slots)

    def per_token(self, forward: Callable[..., torch.Tensor], x: torch.Tensor, feature_dims: int, *args,
                  **kwargs) -> torch.Tensor | None:
        """``forward`` run with ``x`` [1, tokens, *features] viewed as [tokens, 1, *features] and its output viewed
        back, when the rows are per token and ``x`` is not laid out by them yet; else None (run on ``x`` as it is)."""
        if not self.flat or x.shape[0] == len(self.slots) or x.dim() < 1 + feature_dims:
            return None
        lead = x.shape[:x.dim() - feature_dims]
        y = forward(x.reshape(lead.numel(), 1, *x.shape[x.dim() - feature_dims:]), *args, **kwargs)
        return y.view(*lead, *y.shape[2:])

    def expansion(self, batch: int) -> int:
        """``k``: how many batch rows each slot id stands for (beams, returned sequences)."""
        n = len(self.slots)
        if batch % n:
            raise ValueError(
                f"a forward saw {batch} rows but {n} row slots are set; set one slot id per row of the batch"
            )
        return batch // n

    def rows_of(self, slot: int, batch: int, device: torch.device) -> torch.Tensor:
        """The row numbers that use ``slot``.  # [rows]"""
        key = (slot, batch, device)
        rows = self._rows_of.get(key)
        if rows is None:
            k = self.expansion(batch)
            members = [b for b in range(batch) if self.slots[b // k] == slot]
            rows = torch.tensor(members, dtype=torch.long, device=device)
            self._rows_of[key] = rows
        return rows


class RowContext:
    """Shared by all wrappers of one model: the rows of the forward running in this thread / task, and the native
    low-rank kernel once one is loaded (:mod:`.native`; None: torch's ops)."""

    def __init__(self, max_slots: int):
        if max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {max_slots}")
        self.max_slots = max_slots
        self.low_rank: LowRankKernel | None = None  # set whole, between forwards or during one: either route is right
        self._current: contextvars.ContextVar[Rows | None] = contextvars.ContextVar(
            f"adapterfleet_lora_rows_{id(self):x}", default=None
        )

    @contextmanager
    def rows(self, slots: Sequence[int] | torch.Tensor, flat: bool = False) -> Iterator[Rows]:
        """Run the enclosed forwards with row b on adapter slot ``slots[b]`` (-1: base model); ``flat``: per token
        of a one-row forward (:class:`Rows`)."""
        if isinstance(slots, torch.Tensor):
            slots = slots.tolist()
        rows = Rows(slots, self.max_slots, flat)
        token = self._current.set(rows)
        try:
            yield rows
        finally:
            self._current.reset(token)

    def current(self) -> Rows | None:
        return self._current.get()
