"""The engine's KV cache, and surgery on it: join batches, take a subset of rows, undo a step that failed half-way.

:func:`new_cache` makes a cache of :class:`GrowingLayer` s: keys/values live in a buffer with room along T, so a
decode step writes its one position in place. transformers' ``DynamicLayer`` concatenates the whole cache with every
step instead (a copy that grows with the sequence: a quarter of a 32-row decode step's time in the profile).

Only caches made of plain dynamic layers (keys/values [B, heads, T, head_dim]) are operated on (:func:`joinable`);
other layouts (sliding windows, linear attention) fall back to what needs no surgery. Surgery assigns new tensors to
``layer.keys`` / ``layer.values``; a growing layer notices and moves them into a fresh buffer at its next update.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


def pad_left(t: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    """Zeros on the left of ``dim`` up to ``width`` (masked positions: their values are never attended to)."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


GROW_MIN = 64  # positions of headroom at least (right, for decode steps; left, for longer newcomers), when made


class GrowingLayer(DynamicLayer):
    """A :class:`DynamicLayer` whose ``keys`` / ``values`` are views [B, heads, start:end, head_dim] of buffers
    [rows, heads, room, head_dim] with room on both sides along T and, once rows joined, spare rows.

    Nothing is copied that stays where it is: a decode step writes its position at ``end``; rows that leave are
    replaced by rows moved up from the end of the batch (only those rows are copied; :func:`fill_order` picks that
    order); newcomers are written into spare rows, right-aligned at ``end`` (a longer newcomer moves ``start`` left
    and zeroes the older rows' new padding); dropping left padding moves ``start``; undoing a step moves ``end``.
    Only a buffer that is too small is replaced (by one half again as large), which copies the cache once. Measured
    in-process at 3x overload (96 Poisson requests, 64 rows): whole-cache copies on every join and every leave had
    been ~30% of the engine's time."""

    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None
    _view: weakref.ref | None = None  # the keys view handed out last: other keys were assigned by surgery
    _start = 0  # where the view begins along T in the buffers

    def _owned(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The buffers behind ``keys`` / ``values``, or None when surgery assigned tensors of its own."""
        if self._buffers is None or self._view is None or self._view() is not self.keys:
            self._buffers = None
            return None
        return self._buffers

    def room(self) -> int:
        """Positions this layer can hold before its next regrowth (0: no buffer of its own)."""
        owned = self._owned()
        return 0 if owned is None else owned[0].shape[-2] - self._start

    def spare_rows(self) -> int:
        """Rows newcomers can join into without a regrowth."""
        owned = self._owned()
        return 0 if owned is None or self.keys is None else owned[0].shape[0] - self.keys.shape[0]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys = self.keys
        assert keys is not None and self.values is not None, "initialised above"
        rows, length = key_states.shape[0], (keys.shape[-2] if keys.numel() else 0)
        need = length + key_states.shape[-2]
        owned = self._owned()
        if owned is None or self._start + need > owned[0].shape[-2] or keys.shape[0] != rows:
            capacity = owned[0].shape[0] if owned is not None and keys.shape[0] == rows else rows  # spare rows kept
            owned = self._regrow(key_states, capacity, length, left=0, width=length,
                                 right=key_states.shape[-2] + max(GROW_MIN, need // 2))
        end = self._start + length
        owned[0][:rows, :, end:end + key_states.shape[-2]] = key_states
        owned[1][:rows, :, end:end + key_states.shape[-2]] = value_states
        return self._hold(owned, rows, self._start, need)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices`` in that order: rows already in place stay, the others are copied into place."""
        owned = self._owned()
        keys = self.keys
        if owned is None or keys is None or not keys.numel():
            super().batch_select_indices(indices)
            return
        keep = indices.tolist()
        moved = [i for i, r in enumerate(keep) if i != r]
        start, length = self._start, keys.shape[-2]
        if moved:
            dst = torch.tensor(moved, device=indices.device)
            src = indices.index_select(0, dst)
            for buf in owned:
                window = buf[:, :, start:start + length]
                window.index_copy_(0, dst, window.index_select(0, src))  # gathered first: any order is safe
        self._hold(owned, len(keep), start, length)

    def join(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append rows ``keys`` / ``values`` [B2, heads, T2, head_dim], right-aligned with this batch's (the shorter
        side left-padded with zeros: masked positions)."""
        mine = self.keys
        assert mine is not None, "a joined cache was prefilled"
        rows, length = mine.shape[0], mine.shape[-2]
        theirs, their_length = keys.shape[0], keys.shape[-2]
        width = max(length, their_length)
        owned = self._owned()
        if owned is None or rows + theirs > owned[0].shape[0] or self._start + length - width < 0:
            total = rows + theirs
            owned = self._regrow(keys, total + max(total // 2, 1), length, left=max(GROW_MIN, width // 2),
                                 width=width, right=max(GROW_MIN, width // 2))
        end = self._start + length
        start = end - width
        for buf, part in zip(owned, (keys, values), strict=True):
            buf[:rows, :, start:self._start] = 0  # the older rows' new left padding (none unless they are shorter)
            buf[rows:rows + theirs, :, start:end - their_length] = 0
            buf[rows:rows + theirs, :, end - their_length:end] = part
        self._hold(owned, rows + theirs, start, width)

    def narrow(self, begin: int, length: int) -> None:
        """Keep positions ``begin:begin + length`` of the view: dropping left padding no row attends to any more, or
        undoing the appends of a forward that raised half-way. Moves the view over its buffers; copies nothing."""
        owned, keys = self._owned(), self.keys
        assert keys is not None, "only filled layers are narrowed"
        if owned is None:
            _slice(self, begin, length)
        else:
            self._hold(owned, keys.shape[0], self._start + begin, length)

    def _regrow(self, like: torch.Tensor, rows: int, length: int, *, left: int, width: int, right: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """New buffers shaped as ``like`` [*, heads, *, head_dim] with ``rows`` rows and ``left + width + right``
        positions, holding this layer's ``length`` positions right-aligned at ``left + width`` (zeros before them);
        the view starts where they do."""
        keys, values = self.keys, self.values
        assert keys is not None and values is not None, "initialised before it grows"
        out = []
        for part in (keys, values):
            buf = like.new_empty((rows, like.shape[1], left + width + right, like.shape[-1]), dtype=part.dtype)
            if length:
                buf[:part.shape[0], :, left:left + width - length] = 0
                buf[:part.shape[0], :, left + width - length:left + width] = part
            out.append(buf)
        self._start = left + width - length
        return out[0], out[1]

    def _hold(self, buffers: tuple[torch.Tensor, torch.Tensor], rows: int, start: int, length: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        self._buffers, self._start = buffers, start
        keys, values = buffers[0][:rows, :, start:start + length], buffers[1][:rows, :, start:start + length]
        self.keys, self.values = keys, values
        self._view = weakref.ref(keys)
        return keys, values


def cache_arg(module: torch.nn.Module) -> str:
    """A model's name for its cache argument (``past_key_values`` became ``cache`` in transformers 5.x)."""
    return _cache_arg_of(type(module).forward)


@functools.cache
def _cache_arg_of(forward: Callable) -> str:  # read once per class, not on every forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def new_cache() -> DynamicCache:
    """An empty cache whose layers are :class:`GrowingLayer` s."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def joinable(cache: DynamicCache) -> bool:
    return all(type(layer) in (DynamicLayer, GrowingLayer) for layer in cache.layers)


def _filled(layer: object) -> tuple[DynamicLayer, torch.Tensor, torch.Tensor]:
    """A prefilled dynamic cache layer with its keys and values [B, heads, T, head_dim]."""
    assert isinstance(layer, DynamicLayer), "only joinable caches (joinable) are operated on"
    keys, values = layer.keys, layer.values
    assert keys is not None and values is not None, "a prefill fills every layer of its cache"
    return layer, keys, values


def join_caches(cache: DynamicCache, new: DynamicCache) -> None:
    """Append ``new``'s rows to ``cache``: keys/values [B, heads, T, head_dim], the shorter left-padded. A growing
    layer writes them into its spare rows (:meth:`GrowingLayer.join`), so its next decode step writes in place."""
    for mine, theirs in zip(cache.layers, new.layers, strict=True):
        layer, keys, values = _filled(mine)
        _, other_keys, other_values = _filled(theirs)
        if isinstance(layer, GrowingLayer):
            layer.join(other_keys, other_values)
        else:
            width = max(keys.shape[-2], other_keys.shape[-2])
            layer.keys = torch.cat([pad_left(keys, width, -2), pad_left(other_keys, width, -2)], dim=0)
            layer.values = torch.cat([pad_left(values, width, -2), pad_left(other_values, width, -2)], dim=0)


def stack_caches(caches: list[DynamicCache]) -> DynamicCache:
    """One cache of the rows of ``caches``, in order, right-aligned (the shorter left-padded with zeros): per layer
    the rows are concatenated and copied into one growing buffer, instead of joined one cache at a time (each join
    a regrowth of the whole buffer)."""
    if len(caches) == 1:
        return caches[0]
    out = new_cache()
    for index, layers in enumerate(zip(*(c.layers for c in caches), strict=True)):
        filled = [_filled(layer) for layer in layers]
        width = max(keys.shape[-2] for _, keys, _ in filled)
        out.update(torch.cat([pad_left(keys, width, -2) for _, keys, _ in filled]),
                   torch.cat([pad_left(values, width, -2) for _, _, values in filled]), index)
    return out


def fill_order(keep: list[int]) -> list[int]:
    """The rows ``keep`` (ascending batch rows) in the order that moves fewest of them: a kept row below
    ``len(keep)`` stays where it is, and the holes left by rows that leave are filled by kept rows from the end."""
    n = len(keep)
    movers = iter(r for r in keep if r >= n)
    staying = {r for r in keep if r < n}
    return [r if r in staying else next(movers) for r in range(n)]


def subset(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding only ``rows`` (the original is left as it is)."""
    return DynamicCache(ddp_cache_data=[(keys[rows], values[rows])
                                        for _, keys, values in map(_filled, cache.layers)])


def drop_left(cache: DynamicCache, columns: int) -> None:
    """Drop the first ``columns`` positions of every layer (left padding that no row attends to any more)."""
    for layer, keys, _ in map(_filled, cache.layers):
        _narrow(layer, columns, keys.shape[-2] - columns)


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop positions past ``length`` in every layer: undoes the appends of a forward that raised half-way."""
    for layer, keys, _ in map(_filled, cache.layers):
        if keys.shape[-2] > length:
            _narrow(layer, 0, length)


def _narrow(layer: DynamicLayer, begin: int, length: int) -> None:
    if isinstance(layer, GrowingLayer):
        layer.narrow(begin, length)
    else:
        _slice(layer, begin, length)


def _slice(layer: DynamicLayer, begin: int, length: int) -> None:
    """Views of positions ``begin:begin + length`` of a layer's own keys and values."""
    _, keys, values = _filled(layer)
    layer.keys, layer.values = keys[..., begin:begin + length, :], values[..., begin:begin + length, :]
