"""KV-cache surgery for the engine: join batches, take a subset of rows, undo a step that failed half-way.

Only caches made of plain :class:`DynamicLayer` s (keys/values [B, heads, T, head_dim]) are operated on
(:func:`joinable`); other layouts (sliding windows, linear attention) fall back to what needs no surgery.
"""

from __future__ import annotations

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


def joinable(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _filled(layer: object) -> tuple[DynamicLayer, torch.Tensor, torch.Tensor]:
    """A prefilled dynamic cache layer with its keys and values [B, heads, T, head_dim]."""
    assert isinstance(layer, DynamicLayer), "only joinable caches (joinable) are operated on"
    keys, values = layer.keys, layer.values
    assert keys is not None and values is not None, "a prefill fills every layer of its cache"
    return layer, keys, values


def join_caches(cache: DynamicCache, new: DynamicCache) -> None:
    """Append ``new``'s rows to ``cache``: keys/values [B, heads, T, head_dim], the shorter left-padded."""
    for mine, theirs in zip(cache.layers, new.layers, strict=True):
        layer, keys, values = _filled(mine)
        _, other_keys, other_values = _filled(theirs)
        width = max(keys.shape[-2], other_keys.shape[-2])
        layer.keys = torch.cat([pad_left(keys, width, -2), pad_left(other_keys, width, -2)], dim=0)
        layer.values = torch.cat([pad_left(values, width, -2), pad_left(other_values, width, -2)], dim=0)


def subset(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding only ``rows`` (the original is left as it is)."""
    return DynamicCache(ddp_cache_data=[(keys[rows], values[rows])
                                        for _, keys, values in map(_filled, cache.layers)])


def truncate(cache: DynamicCache, length: int) -> None:
    """Drop positions past ``length`` in every layer: undoes the appends of a forward that raised half-way."""
    for layer, keys, values in map(_filled, cache.layers):
        if keys.shape[-2] > length:
            layer.keys, layer.values = keys[..., :length, :], values[..., :length, :]
