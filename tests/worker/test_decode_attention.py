"""The native decode attention (``lora/native/decode_attention.cpp``) against torch's scaled_dot_product_attention on
the same rows: left-padded masks, grouped query heads, strided views of a growing cache, head sizes on and off its
vector paths; and a row's result does not depend on the batch it is in."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adapterfleet.worker.lora import native


@pytest.fixture(scope="module")
def attention(native_kernel):
    if native_kernel is None:
        pytest.skip("no C++ compiler here: the native kernels cannot be built")
    return native_kernel.attention


def _rows(rows: int, q_heads: int, kv_heads: int, width: int, dim: int, seed: int):
    """q [B, Hq, D]; k, v [B, Hkv, T, D] as views into larger buffers (as a growing cache holds them); a left-padded
    int64 mask [B, T] (row b attends to its last lengths[b] positions)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, q_heads, dim, generator=gen)
    room = torch.randn(2, rows + 3, kv_heads, width + 9, dim, generator=gen)
    k, v = room[0, :rows, :, 5:5 + width], room[1, :rows, :, 5:5 + width]
    lengths = torch.randint(1, width + 1, (rows,), generator=gen)
    lengths[0] = width  # one row with no padding
    mask = (torch.arange(width).unsqueeze(0) >= width - lengths.unsqueeze(1)).long()
    return q, k, v, mask


def _reference(q, k, v, mask, scale):
    groups = q.shape[1] // k.shape[1]
    keys = k.repeat_interleave(groups, dim=1)
    values = v.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask.bool()[:, None, None, :],
                                         scale=scale)
    return out[:, :, 0]


@pytest.mark.parametrize(("q_heads", "kv_heads", "dim"), [(8, 4, 64), (4, 4, 128), (6, 2, 24), (2, 1, 8)],
                         ids=["gqa-64", "mha-128", "gqa-24-any-dim", "mqa-8"])
def test_decode_attention_matches_torch(attention, q_heads, kv_heads, dim):
    q, k, v, mask = _rows(7, q_heads, kv_heads, 37, dim, seed=dim)
    assert not k.is_contiguous() and attention.takes(q, k, v)
    scale = dim ** -0.5
    got = attention(q, k, v, mask, scale)
    torch.testing.assert_close(got, _reference(q, k, v, mask, scale), rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(attention(q, k, v, mask.bool(), scale), got, rtol=0, atol=0)  # a bool mask alike


def test_padding_is_never_read(attention):
    """Whatever the masked positions hold (here NaN and inf), the result is that of the positions attended to."""
    q, k, v, mask = _rows(5, 8, 4, 30, 64, seed=1)
    clean = attention(q, k, v, mask, 0.125)
    k, v = k.clone(), v.clone()
    hidden = ~mask.bool()
    k[hidden.unsqueeze(1).expand(-1, k.shape[1], -1)] = float("nan")
    v[hidden.unsqueeze(1).expand(-1, v.shape[1], -1)] = float("inf")
    torch.testing.assert_close(attention(q, k, v, mask, 0.125), clean, rtol=0, atol=0)


def test_the_last_position_is_always_attended(attention):
    """A row whose mask keeps nothing attends to its own (last) position, as ragged.py's masks do: its value."""
    q, k, v, mask = _rows(3, 4, 2, 12, 64, seed=2)
    mask[1] = 0
    out = attention(q, k, v, mask, 0.125)
    torch.testing.assert_close(out[1], v[1, :, -1].repeat_interleave(2, dim=0), rtol=0, atol=0)


def test_a_rows_result_does_not_depend_on_its_batch(attention):
    q, k, v, mask = _rows(9, 8, 4, 50, 64, seed=3)
    together = attention(q, k, v, mask, 0.125)
    for b in range(9):
        alone = attention(q[b:b + 1], k[b:b + 1], v[b:b + 1], mask[b:b + 1], 0.125)
        assert torch.equal(alone[0], together[b]), f"row {b} differs alone"


def test_what_the_kernel_refuses(attention):
    q, k, v, mask = _rows(2, 8, 4, 10, 64, seed=4)
    assert not native.DecodeAttention.takes(q.double(), k.double(), v.double())
    assert not native.DecodeAttention.takes(q[..., ::2], k[..., ::2], v[..., ::2])  # head dimension strided
    assert not native.DecodeAttention.takes(q[:, :6], k[:, :4], v[:, :4])  # 6 query heads over 4
    with pytest.raises(RuntimeError, match="shapes do not match"):
        attention(q, k, v, mask[:, :9], 0.125)
    with pytest.raises(RuntimeError, match="int64 or bool mask"):
        attention(q, k, v, mask.float(), 0.125)
