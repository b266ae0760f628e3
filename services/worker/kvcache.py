"""The engine's KV cache, and surgery on it: join batches, take a subset of rows, undo a step that failed half-way.

:func:`new_cache` makes a cache of :class:`GrowingLayer` s: keys/values live in a buffer with room along T, so a
decode step writes its one position in place. transformers' ``DynamicLayer`` concatenates the whole cache with every
step instead (a copy that grows with the sequence: a quarter of a 32-row decode step's time in the profile).

Only caches made of plain dynamic layers (keys/values [B, heads, T, head_dim]) are operated on (:func:`joinable`);
other layouts (sliding windows, linear attention) fall back to what needs no surgery. Surgery assigns new tensors to
``layer.keys`` / ``layer.values``; a growing layer notices and moves them into a fresh buffer at its next update.
"""

from __future__ import annotations

import weakref

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


GROW_MIN = 64  # positions of headroom at least, when a buffer is (re)made


class GrowingLayer(DynamicLayer):
    """A :class:`DynamicLayer` whose ``keys`` / ``values`` are views [B, heads, :T, head_dim] of buffers with room
    to grow along T (amortised: a full buffer is replaced by one half again as long)."""

    _buffers: tuple[torch.Tensor, torch.Tensor] | None = None
    _view: weakref.ref | None = None  # the keys view handed out last: other keys were assigned by surgery

    def _owned(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The buffers behind ``keys`` / ``values``, or None when surgery assigned tensors of its own."""
        if self._buffers is None or self._view is None or self._view() is not self.keys:
            self._buffers = None
            return None
        return self._buffers

    def room(self) -> int:
        """Positions this layer can hold before its next regrowth (0: no buffer of its own)."""
        owned = self._owned()
        return 0 if owned is None else owned[0].shape[-2]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None, "initialised above"
        length = keys.shape[-2] if keys.numel() else 0
        need = length + key_states.shape[-2]
        owned = self._owned()
        if owned is None or need > owned[0].shape[-2] or owned[0].shape[0] != key_states.shape[0]:
            room = need + max(GROW_MIN, need // 2)
            owned = _buffer(key_states, room), _buffer(value_states, room)
            if length:
                owned[0][..., :length, :] = keys
                owned[1][..., :length, :] = values
        owned[0][..., length:need, :] = key_states
        owned[1][..., length:need, :] = value_states
        return self._hold(owned, need)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep rows ``indices``: one gather of the whole buffers, headroom included (selecting the views would copy
        the rows out, then the next update would copy them again into a buffer with room)."""
        owned = self._owned()
        if owned is None or self.keys is None or not self.keys.numel():
            super().batch_select_indices(indices)
            return
        self._hold((owned[0].index_select(0, indices), owned[1].index_select(0, indices)), self.keys.shape[-2])

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        """Take buffers [B, heads, room, head_dim] whose first ``length`` positions are the cache."""
        self._hold((keys, values), length)

    def _hold(self, buffers: tuple[torch.Tensor, torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._buffers = buffers
        keys, values = buffers[0][..., :length, :], buffers[1][..., :length, :]
        self.keys, self.values = keys, values
        self._view = weakref.ref(keys)
        return keys, values


def _buffer(like: torch.Tensor, room: int) -> torch.Tensor:
    shape = list(like.shape)
    shape[-2] = room
    return like.new_empty(shape)


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
    layer gets the joined rows in a buffer with room, so its next decode step writes in place."""
    for mine, theirs in zip(cache.layers, new.layers, strict=True):
        layer, keys, values = _filled(mine)
        _, other_keys, other_values = _filled(theirs)
        width = max(keys.shape[-2], other_keys.shape[-2])
        if isinstance(layer, GrowingLayer):
            room = width + max(GROW_MIN, width // 2)
            layer.adopt(_stacked(keys, other_keys, room), _stacked(values, other_values, room), width)
        else:
            layer.keys = torch.cat([pad_left(keys, width, -2), pad_left(other_keys, width, -2)], dim=0)
            layer.values = torch.cat([pad_left(values, width, -2), pad_left(other_values, width, -2)], dim=0)


def _stacked(first: torch.Tensor, second: torch.Tensor, room: int) -> torch.Tensor:
    """[B1 + B2, heads, room, head_dim]: both right-aligned at ``width`` = the longer's T (zeros on the left of the
    shorter: masked positions), the rest left for growth."""
    width = max(first.shape[-2], second.shape[-2])
    shape = list(first.shape)
    shape[0] += second.shape[0]
    shape[-2] = room
    out = first.new_empty(shape)
    for part, rows in ((first, slice(0, first.shape[0])), (second, slice(first.shape[0], None))):
        pad = width - part.shape[-2]
        out[rows, :, :pad] = 0
        out[rows, :, pad:width] = part
    return out


def subset(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding only ``rows`` (the original is left as it is)."""
    return DynamicCache(ddp_cache_data=[(keys[rows], values[rows])
                                        for _, keys, values in map(_filled, cache.layers)])


def drop_left(cache: DynamicCache, columns: int) -> None:
    """Drop the first ``columns`` positions of every layer (left padding that no row attends to any more)."""
    for layer, keys, values in map(_filled, cache.layers):
        layer.keys, layer.values = keys[..., columns:, :], values[..., columns:, :]


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop positions past ``length`` in every layer: undoes the appends of a forward that raised half-way."""
    for layer, keys, values in map(_filled, cache.layers):
        if keys.shape[-2] > length:
            layer.keys, layer.values = keys[..., :length, :], values[..., :length, :]
