"""Per-slot tensors of one wrapped module, stacked along a leading "local row" dimension.

Local row 0 is the null row (no adapter: zeros, or ones for a scale); installed slots take rows 1..L in install
order. ``slot_map`` ([max_slots + 1], long; built when first asked for) turns the context's ``slot + 1`` index
into a local row; a forward's row plan (:mod:`.plan`) gathers by local row and never loops over adapters.

Tensors whose per-slot entry has a rank dimension are zero-padded to the largest rank installed in this module
(zero rows of A and zero columns of B add nothing). Only the adapters that touch this module take rows here, and
every add/remove builds new tensors of exactly the needed size: removing the last adapter of a module drops its
tensors, so unloading really frees memory.

A :class:`SlotStack` is immutable; wrappers swap in a new one with a single attribute assignment, so a forward
running in another thread sees either the old or the new stack, never a half-written one. Each stacked tensor is a
view of the first rows of a storage with a row for every slot (allocated and filled when the stack first needs
room, or a larger rank): an install whose rank fits writes its row past the end of every existing view of that
storage and publishes a longer view, copying nothing else (a cold load does not pay for the adapters already
installed). An install takes every module its adapter changes in three steps: each module's next stack and the
writes that fill its row (:meth:`SlotStack.grown`), then all the writes, then every stack published; a failure
before the last step publishes nothing. A removal builds exact new tensors, so unloading still frees memory. Its
:class:`Layout` (slot order and which slots carry which field) is what a forward's row plan depends on; wrappers
whose stacks share a layout (every module of an all-linear adapter) share one plan per batch.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class Layout:
    """Hashable (hash computed once) identity of a stack's slot order and of the slots that carry each field.

    Layouts are interned (:meth:`of`): the stacks of every module that an install (or a removal) takes through the
    same change share one object, so :meth:`with_slot`'s memo is hit by all but the first module of an install.
    Both the table and the memo hold layouts weakly: a layout lives as long as a stack uses it."""

    __slots__ = ("__weakref__", "_hash", "_key", "_next", "has", "order")

    def __init__(self, order: tuple[int, ...], has: dict[str, frozenset[int]]):
        self.order = order  # global slot of local row i + 1
        self.has = has  # read-only: shared by every stack with this layout
        self._key = (order, tuple(sorted(has.items(), key=lambda item: item[0])))
        self._hash = hash(self._key)
        # with_slot's answers
        self._next: weakref.WeakValueDictionary[tuple[int, frozenset[str]], Layout] = weakref.WeakValueDictionary()

    @classmethod
    def of(cls, order: tuple[int, ...], has: dict[str, frozenset[int]]) -> Layout:
        """The layout with this order and these carriers: the one already in use, if any stack uses it."""
        made = cls(order, has)
        return _LAYOUTS.setdefault(made._key, made)

    def with_slot(self, slot: int, fields: frozenset[str]) -> Layout:
        """This layout with ``slot`` appended, carrying ``fields``. Remembered: every module an adapter changes
        goes from one shared layout to the same next one, so an install builds it once, not once per module
        (callers serialise installs)."""
        key = (slot, fields)
        nxt = self._next.get(key)
        if nxt is None:
            has = {name: slots | {slot} if name in fields else slots for name, slots in self.has.items()}
            nxt = self._next[key] = Layout.of((*self.order, slot), has)
        return nxt

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return self is other or (
            isinstance(other, Layout) and self._hash == other._hash and self._key == other._key
        )


_LAYOUTS: weakref.WeakValueDictionary[tuple, Layout] = weakref.WeakValueDictionary()


@dataclass(frozen=True)
class Field:
    """One stacked tensor: the value of rows that lack it, and the dim of a per-slot entry that holds the rank."""

    fill: float = 0.0
    rank_dim: int | None = None


@dataclass(frozen=True)
class Scaled:
    """A per-slot entry that is written into its row times ``factor`` (one pass: no scaled temporary)."""

    tensor: torch.Tensor
    factor: float

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape


@dataclass(frozen=True)
class Transposed:
    """A per-slot entry that is the transpose of a matrix (times ``factor`` if given): a LoRA's A and B, whose rows
    the stacks hold transposed. numpy takes the transpose when the row is written (~0.3 us); torch's ``.T`` and a
    ``.numpy()`` of the transposed view cost ~8 us, for each of the ~112 entries of a cold load."""

    tensor: torch.Tensor
    factor: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)[::-1]


Entry = torch.Tensor | Scaled | Transposed


def _numpy_ok(t: torch.Tensor) -> bool:
    """Whether numpy can write or read ``t`` in place (``is_cpu``: ``device.type`` costs ~1 us a call on the 2-core
    box, and an install asks for each of its ~112 tensors)."""
    return t.is_cpu and t.dtype == torch.float32 and not t.requires_grad


class Write:
    """One row (or the first part of one) of a stack's storage to fill from one entry: ``storage[index] = src``
    (times its factor). An install makes all of its writes before it publishes any stack (:func:`write_all`).

    A LoRA's entries are :class:`Transposed` ([in, r] rows of an [r, in] file tensor), and numpy's strided copy of
    them takes about half the time of torch's (~1 vs ~2 ms for a rank-16 all-linear adapter of 5 MB; float32 on the
    2-core box), which a cold load pays in full; torch copies only what numpy cannot hold (another dtype or device).
    ``array``: the storage's numpy view, made once and kept with the storage (``.numpy()`` costs ~4 us a call on
    that box, and indexing a numpy array a tenth of indexing a tensor)."""

    __slots__ = ("array", "index", "src", "storage")

    def __init__(self, storage: torch.Tensor, index: int | tuple[int | slice, ...], src: Entry,
                 array: np.ndarray | None):
        self.storage, self.index, self.src, self.array = storage, index, src, array

    def run(self) -> None:
        src = self.src
        if isinstance(src, torch.Tensor):
            t, factor, flip = src, None, False
        else:
            t, factor, flip = src.tensor, src.factor, isinstance(src, Transposed)
        if self.array is not None and _numpy_ok(t):
            dst, values = self.array[self.index], t.numpy()
            values = values.T if flip else values
            if factor is None:
                np.copyto(dst, values)
            else:
                np.multiply(values, np.float32(factor), out=dst)
            return
        t = t.T if flip else t
        if factor is None:
            self.storage[self.index].copy_(t)
        else:
            self.storage[self.index].copy_(t.to(torch.float32) * factor)


def write_all(writes: Sequence[Write]) -> None:
    for w in writes:
        w.run()


class SlotStack:
    def __init__(
        self,
        fields: dict[str, Field],
        max_slots: int,
        device: torch.device,
        *,
        order: tuple[int, ...] = (),
        ranks: dict[int, int] | None = None,
        has: dict[str, frozenset[int]] | None = None,
        tensors: dict[str, torch.Tensor | None] | None = None,
        slot_map: torch.Tensor | None = None,
        storage: dict[str, torch.Tensor | None] | None = None,
        layout: Layout | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ):
        self.fields = fields
        self.max_slots = max_slots
        self.device = device
        # global slot of local row i + 1, and the slots that carry each field (``layout``'s when it is given)
        self.layout = layout or Layout.of(order, has or {name: frozenset() for name in fields})
        self.order, self.has = self.layout.order, self.layout.has
        self.ranks = dict(ranks or {})  # slot -> rank in this module (0: no low-rank part)
        self.tensors = tensors or {name: None for name in fields}  # name -> [L + 1, *entry_shape] or None
        # name -> [capacity >= L + 1, *entry_shape]: what ``tensors`` are the first rows of
        self.storage = storage if storage is not None else dict(self.tensors)
        self._arrays = arrays or {}  # name -> numpy view of a CPU float32 storage (see :class:`Write`)
        self._slot_map = slot_map  # built on first use (a forward's row plan does not need it)
        self.slots = frozenset(self.order)
        self.rank = max(self.ranks.values(), default=0)

    def __getitem__(self, name: str) -> torch.Tensor | None:
        return self.tensors[name]

    def tensor(self, name: str) -> torch.Tensor:
        """The stacked tensor of a field that some installed slot carries (e.g. one in a row plan's ``carried``)."""
        t = self.tensors[name]
        if t is None:
            raise KeyError(f"no slot in this stack carries {name!r}")
        return t

    @property
    def slot_map(self) -> torch.Tensor | None:
        """[max_slots + 1] long: slot + 1 -> local row, 0 = none; None when no slot is installed."""
        if self._slot_map is None and self.order:
            rows = [0] * (self.max_slots + 1)
            for local, s in enumerate(self.order, start=1):
                rows[s + 1] = local
            self._slot_map = torch.tensor(rows, dtype=torch.long, device=self.device)
        return self._slot_map

    def nbytes(self) -> int:
        total = (self.max_slots + 1) * 8 if self.order else 0  # the slot map's, built or not
        return total + sum(t.nbytes for t in self.storage.values() if t is not None)

    def _padded_shape(self, name: str, shape: tuple[int, ...], rank: int) -> tuple[int, ...]:
        dim = self.fields[name].rank_dim
        if dim is None:
            return shape
        padded = list(shape)
        padded[dim] = rank
        return tuple(padded)

    def added(self, slot: int, entries: dict[str, Entry | None], rank: int) -> SlotStack:
        """A new stack with ``slot`` appended; ``entries`` maps field -> per-slot tensor, or a :class:`Scaled` or
        :class:`Transposed` one (None: field not used)."""
        stack, writes = self.grown(slot, entries, rank)
        write_all(writes)
        return stack

    def grown(self, slot: int, entries: dict[str, Entry | None], rank: int) -> tuple[SlotStack, list[Write]]:
        """:meth:`added` in two steps: the new stack, and the writes that fill its row. The stack must not be
        published (nor grown again) before every write is made; until then the stack published before is
        untouched (its views end before the new row). An install grows every module's stack first and then makes
        all their writes at once (:func:`write_all`)."""
        if slot in self.slots:
            raise ValueError(f"slot {slot} already holds an adapter in this module")
        if not 0 <= slot < self.max_slots:
            raise ValueError(f"slot {slot} is out of range 0..{self.max_slots - 1}")
        if not self.fields.keys() >= entries.keys():
            raise ValueError(f"unknown fields {sorted(set(entries) - set(self.fields))}")
        new_rank = max(self.rank, rank)
        row = len(self.order) + 1  # the new local row
        tensors: dict[str, torch.Tensor | None] = {}
        storage: dict[str, torch.Tensor | None] = {}
        arrays: dict[str, np.ndarray] = {}
        writes: list[Write] = []
        carried: list[str] = []
        for name, spec in self.fields.items():
            old, new = self.tensors[name], entries.get(name)
            if new is not None:
                carried.append(name)
                ref = new if isinstance(new, torch.Tensor) else new.tensor
                given = tuple(new.shape)  # what the entry writes (a Transposed entry's is its tensor's, reversed)
            elif old is not None:
                ref, given = old, tuple(old.shape[1:])
            else:
                tensors[name] = storage[name] = None
                continue
            shape = self._padded_shape(name, given, new_rank)
            room = self.storage[name]
            array = self._arrays.get(name)
            if (room is not None and room.shape[0] > row and room.shape[1:] == shape
                    and room.dtype == ref.dtype and room.device == ref.device):
                out = room  # the new row lies past every view published so far: written in place
                if new is None or given != shape:  # padding (or no entry): the rest of the row too
                    out[row].fill_(spec.fill)
            else:
                # room for every slot at once (as vLLM preallocates its LoRA stacks), so the installs after this one
                # write in place. The spare rows are written now: their memory is faulted in once, here, and later
                # installs only copy their own weights into memory that is already there (first touch of fresh
                # memory costs more than the copy on a busy VM)
                out = torch.full((self.max_slots + 1, *shape), spec.fill, dtype=ref.dtype, device=ref.device)
                if old is not None:
                    out[tuple(slice(0, n) for n in old.shape)].copy_(old)
                array = None
            if array is None and _numpy_ok(out):
                array = out.numpy()
            if array is not None:
                arrays[name] = array
            if new is not None:
                index: int | tuple[int | slice, ...] = row
                if given != shape:
                    index = (row, *(slice(0, n) for n in given))
                writes.append(Write(out, index, new, array))
            storage[name] = out
            tensors[name] = out[:row + 1]
        stack = SlotStack(self.fields, self.max_slots, self.device, ranks={**self.ranks, slot: rank},
                          tensors=tensors, storage=storage, layout=self.layout.with_slot(slot, frozenset(carried)),
                          arrays=arrays)
        return stack, writes

    def removed(self, slot: int) -> SlotStack:
        """A new stack without ``slot``; tensors shrink to the remaining slots and rank (or go away)."""
        if slot not in self.slots:
            return self
        order = tuple(s for s in self.order if s != slot)
        ranks = {s: r for s, r in self.ranks.items() if s != slot}
        has = {name: slots - {slot} for name, slots in self.has.items()}
        new_rank = max(ranks.values(), default=0)
        keep = [0] + [i + 1 for i, s in enumerate(self.order) if s != slot]
        tensors: dict[str, torch.Tensor | None] = {}
        for name, spec in self.fields.items():
            old = self.tensors[name]
            if old is None or not has[name]:
                tensors[name] = None
                continue
            rows = old[torch.tensor(keep, device=old.device)]  # a fresh tensor: the old one is released
            if spec.rank_dim is not None:
                rows = rows.narrow(spec.rank_dim + 1, 0, new_rank).contiguous()
            tensors[name] = rows
        return self._with(order, ranks, has, tensors)

    def _with(
        self,
        order: tuple[int, ...],
        ranks: dict[int, int],
        has: dict[str, frozenset[int]],
        tensors: dict[str, torch.Tensor | None],
        storage: dict[str, torch.Tensor | None] | None = None,
    ) -> SlotStack:
        return SlotStack(
            self.fields, self.max_slots, self.device, order=order, ranks=ranks, has=has, tensors=tensors,
            storage=storage,
        )
