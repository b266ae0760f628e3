"""The engine's KV cache: growing layers write in place and stay equal to transformers' concatenating cache; left
padding that no row attends to any more is dropped, so a batch that never empties does not grow without bound."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from adapterfleet.worker.engine import _trimmed
from adapterfleet.worker.kvcache import GrowingLayer, join_caches, joinable, new_cache, truncate


def _steps(cache: DynamicCache, gen: torch.Generator, widths: list[int], rows: int = 3) -> list[torch.Tensor]:
    out = []
    for w in widths:
        k = torch.randn(rows, 2, w, 4, generator=gen)
        keys, _ = cache.update(k, k * 2, 0)
        out.append(keys.clone())
    return out


def test_growing_layers_equal_transformers_dynamic_cache_through_growth():
    mine, theirs = new_cache(), DynamicCache()
    widths = [7, *([1] * 150), 5]  # the prefill, then decode steps past several regrowths
    for a, b in zip(_steps(mine, torch.Generator().manual_seed(0), widths),
                    _steps(theirs, torch.Generator().manual_seed(0), widths), strict=True):
        assert torch.equal(a, b)
    assert type(mine.layers[0]) is GrowingLayer and joinable(mine)
    layer = mine.layers[0]
    assert layer.room() > layer.keys.shape[-2]  # room to grow
    assert torch.equal(layer.values, theirs.layers[0].values)


def test_a_decode_step_writes_in_place_instead_of_copying_the_cache():
    cache = new_cache()
    cache.update(torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4), 0)
    before = cache.layers[0].keys.data_ptr()
    cache.update(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4), 0)
    assert cache.layers[0].keys.data_ptr() == before  # the same storage, one position longer
    assert cache.layers[0].keys.shape[-2] == 9


def test_select_join_and_truncate_keep_the_contents():
    gen = torch.Generator().manual_seed(1)
    mine, theirs = new_cache(), DynamicCache()
    for c in (mine, theirs):
        _steps(c, torch.Generator().manual_seed(1), [6, 1, 1])
    index = torch.tensor([2, 0])
    mine.batch_select_indices(index)
    theirs.batch_select_indices(index)
    assert torch.equal(mine.layers[0].keys, theirs.layers[0].keys)
    assert mine.layers[0].room() > 8  # the selected rows kept their room
    other = DynamicCache()
    other.update(torch.randn(1, 2, 4, 4, generator=gen), torch.randn(1, 2, 4, 4, generator=gen), 0)
    other2 = DynamicCache()
    other2.update(other.layers[0].keys.clone(), other.layers[0].values.clone(), 0)
    join_caches(mine, other)
    join_caches(theirs, other2)
    truncate(mine, 7)
    truncate(theirs, 7)
    step = torch.randn(3, 2, 1, 4, generator=gen)
    a, _ = mine.update(step, step, 0)
    b, _ = theirs.update(step, step, 0)
    assert torch.equal(a, b)


def test_padding_no_row_attends_to_is_dropped_once_it_is_worth_a_copy():
    cache = new_cache()
    cache.update(torch.randn(2, 2, 80, 4), torch.randn(2, 2, 80, 4), 0)
    mask = torch.ones(2, 80, dtype=torch.long)
    mask[:, :30] = 0  # both rows joined a wider batch whose longer rows have left
    kept = cache.layers[0].keys[..., 30:, :].clone()
    trimmed = _trimmed(cache, mask)
    assert trimmed.shape == (2, 50) and bool(trimmed.all())
    assert torch.equal(cache.layers[0].keys, kept)
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[0, :40] = 0  # row 1 still attends to every column: nothing to drop
    assert _trimmed(cache, mask) is mask
    small = torch.ones(2, 50, dtype=torch.long)
    small[:, :5] = 0  # a few columns are not worth a copy of the cache
    assert _trimmed(cache, small) is small


def test_a_join_lands_in_a_buffer_with_room_left_padded():
    gen = torch.Generator().manual_seed(2)
    mine, theirs = new_cache(), DynamicCache()
    for c in (mine, theirs):
        _steps(c, torch.Generator().manual_seed(3), [5, 1])
    newcomer = [torch.randn(2, 2, 9, 4, generator=gen) for _ in range(2)]
    for c in (mine, theirs):
        other = DynamicCache()
        other.update(newcomer[0].clone(), newcomer[1].clone(), 0)
        join_caches(c, other)
    assert torch.equal(mine.layers[0].keys, theirs.layers[0].keys)
    assert torch.equal(mine.layers[0].values, theirs.layers[0].values)
    assert mine.layers[0].keys.shape == (5, 2, 9, 4) and mine.layers[0].room() > 9
    assert not mine.layers[0].keys[:3, :, :3].any()  # the shorter rows' padding is zeros
    step = torch.randn(5, 2, 1, 4, generator=gen)
    assert torch.equal(mine.update(step, step, 0)[0], theirs.update(step, step, 0)[0])
