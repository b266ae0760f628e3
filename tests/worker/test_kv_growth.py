"""The engine's KV cache: growing layers write in place and stay equal to transformers' concatenating cache; left
padding that no row attends to any more is dropped, so a batch that never empties does not grow without bound."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from adapterfleet.worker.engine import _trimmed
from adapterfleet.worker.kvcache import (
    GrowingLayer,
    fill_order,
    join_caches,
    joinable,
    new_cache,
    stack_caches,
    truncate,
)


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


def test_padding_no_row_attends_to_is_dropped_without_a_copy():
    cache = new_cache()
    cache.update(torch.randn(2, 2, 80, 4), torch.randn(2, 2, 80, 4), 0)
    mask = torch.ones(2, 80, dtype=torch.long)
    mask[:, :30] = 0  # both rows joined a wider batch whose longer rows have left
    kept = cache.layers[0].keys[..., 30:, :].clone()
    storage = cache.layers[0].keys.untyped_storage().data_ptr()
    trimmed = _trimmed(cache, mask)
    assert trimmed.shape == (2, 50) and bool(trimmed.all())
    assert torch.equal(cache.layers[0].keys, kept)
    assert cache.layers[0].keys.untyped_storage().data_ptr() == storage  # the view moved; nothing was copied
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[0, :40] = 0  # row 1 still attends to every column: nothing to drop
    assert _trimmed(cache, mask) is mask
    small = torch.ones(2, 50, dtype=torch.long)
    small[:, :5] = 0  # even a few columns go: dropping them costs nothing
    assert _trimmed(cache, small).shape == (2, 45) and cache.layers[0].keys.shape[-2] == 45
    step = torch.randn(2, 2, 1, 4)
    keys, _ = cache.update(step, step, 0)  # and the next step still writes in place
    assert keys.shape[-2] == 46 and keys.untyped_storage().data_ptr() == storage
    assert torch.equal(keys[..., :45, :], kept[..., 5:, :]) and torch.equal(keys[..., 45:, :], step)


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


def test_rows_that_leave_are_refilled_from_the_end_moving_only_those_rows():
    assert fill_order([0, 1, 2, 3]) == [0, 1, 2, 3]
    assert fill_order([0, 2, 4, 5]) == [0, 4, 2, 5]  # holes 1 and 3 take rows 4 and 5; rows 0 and 2 stay
    assert fill_order([3, 4]) == [3, 4]
    assert fill_order([]) == []
    gen = torch.Generator().manual_seed(4)
    mine, theirs = new_cache(), DynamicCache()
    for c in (mine, theirs):
        _steps(c, torch.Generator().manual_seed(5), [6, 1], rows=6)
    storage = mine.layers[0].keys.untyped_storage().data_ptr()
    copies = []
    real = torch.Tensor.index_select

    def counted(t, dim, index):
        copies.append(index.numel())
        return real(t, dim, index)

    order = torch.tensor(fill_order([0, 2, 4, 5]))
    torch.Tensor.index_select = counted  # type: ignore[method-assign]
    try:
        mine.batch_select_indices(order)
    finally:
        torch.Tensor.index_select = real  # type: ignore[method-assign]
    theirs.batch_select_indices(order)
    assert copies and max(copies) == 2  # the two moved rows only, never the whole batch
    assert torch.equal(mine.layers[0].keys, theirs.layers[0].keys)
    assert torch.equal(mine.layers[0].values, theirs.layers[0].values)
    assert mine.layers[0].keys.untyped_storage().data_ptr() == storage
    step = torch.randn(4, 2, 1, 4, generator=gen)
    assert torch.equal(mine.update(step, step, 0)[0], theirs.update(step, step, 0)[0])


def test_newcomers_join_into_spare_rows_and_a_longer_one_moves_the_start_left():
    gen = torch.Generator().manual_seed(6)
    mine, theirs = new_cache(), DynamicCache()
    for c in (mine, theirs):
        _steps(c, torch.Generator().manual_seed(7), [5, 1], rows=2)

    def join(rows: int, width: int) -> None:
        k, v = torch.randn(rows, 2, width, 4, generator=gen), torch.randn(rows, 2, width, 4, generator=gen)
        for c in (mine, theirs):
            other = DynamicCache()
            other.update(k.clone(), v.clone(), 0)
            join_caches(c, other)

    join(2, 4)  # the first join regrows: room for more rows and on the left
    layer = mine.layers[0]
    storage = layer.keys.untyped_storage().data_ptr()
    assert layer.spare_rows() >= 1
    join(1, 3)  # shorter: lands in a spare row, left-padded
    join(layer.spare_rows(), 10)  # longer than the batch: the start moves left, older rows padded with zeros
    assert layer.keys.untyped_storage().data_ptr() == storage  # every join written in place
    assert torch.equal(layer.keys, theirs.layers[0].keys) and torch.equal(layer.values, theirs.layers[0].values)
    assert not layer.keys[:2, :, :4].any()
    step = torch.randn(layer.keys.shape[0], 2, 1, 4, generator=gen)
    assert torch.equal(mine.update(step, step, 0)[0], theirs.update(step, step, 0)[0])
    join(1, 2)  # no spare row left: one regrowth, same contents
    assert layer.keys.untyped_storage().data_ptr() != storage
    assert torch.equal(layer.keys, theirs.layers[0].keys)


def test_stacked_caches_are_right_aligned_in_one_growing_buffer():
    """Newcomers prefilled into caches of their own (one row each, different lengths, two layers) become one cache:
    each row right-aligned, zeros to its left, and the next decode step writes in place."""
    gen = torch.Generator().manual_seed(2)
    caches, rows = [], []
    for length in (3, 6, 1):
        c = new_cache()
        for layer in range(2):
            k = torch.randn(1, 2, length, 4, generator=gen)
            c.update(k, -k, layer)
        caches.append(c)
        rows.append(c.layers[1].keys[0])
    assert stack_caches(caches[:1]) is caches[0]
    stacked = stack_caches(caches)
    assert joinable(stacked) and all(type(layer) is GrowingLayer for layer in stacked.layers)
    keys, values = stacked.layers[1].keys, stacked.layers[1].values  # [3, 2, 6, 4]
    assert keys.shape == (3, 2, 6, 4) and torch.equal(values, -keys)
    for i, row in enumerate(rows):
        length = row.shape[-2]
        assert torch.equal(keys[i, :, 6 - length:], row) and not keys[i, :, :6 - length].any()
    before = keys.data_ptr()
    stacked.update(torch.randn(3, 2, 1, 4, generator=gen), torch.randn(3, 2, 1, 4, generator=gen), 1)
    assert stacked.layers[1].keys.data_ptr() == before and stacked.layers[1].keys.shape[-2] == 7
