"""The one-pass finiteness check of a verified safetensors file: it vouches only for what it has seen (one float
dtype, every value finite) and otherwise leaves the per-tensor check to name the bad tensor; a value that is
finite in the file but overflows the worker's dtype is still refused."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from adapterfleet.common.errors import InvalidAdapter
from adapterfleet.store.safetensors_header import header_bytes_needed, parse_header
from adapterfleet.worker import tensor_bytes
from adapterfleet.worker.tensor_bytes import all_finite


def parsed(tensors: dict[str, torch.Tensor]):
    raw = bytearray(save(tensors))
    return raw, parse_header(raw[:header_bytes_needed(raw[:8])], len(raw))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_finite_file_of_one_float_dtype_is_vouched_for(dtype):
    assert all_finite(*parsed({"a": torch.randn(4, 3).to(dtype), "b": torch.randn(7).to(dtype)}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_one_bad_value_anywhere_is_not(bad, dtype):
    b = torch.randn(50)
    b[31] = bad
    tensors = {"a": torch.randn(4, 3), "b": b, "c": torch.randn(2)}
    assert not all_finite(*parsed({k: v.to(dtype) for k, v in tensors.items()}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_scan_sees_every_block(monkeypatch, dtype):
    monkeypatch.setattr(tensor_bytes, "FINITE_BLOCK", 7)  # 53 values: seven whole blocks and a partial one
    assert all_finite(*parsed({"a": torch.randn(3).to(dtype), "b": torch.randn(50).to(dtype)}))
    for at in (0, 3, 4, 10, 11, 45, 49):  # first and last value of blocks, and of the file (value 3 + at)
        b = torch.randn(50)
        b[at] = float("inf")
        assert not all_finite(*parsed({"a": torch.randn(3).to(dtype), "b": b.to(dtype)})), at


def test_the_largest_and_smallest_finite_values_pass():
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        info = torch.finfo(dtype)
        edge = torch.tensor([info.max, -info.max, info.tiny, info.smallest_normal / 4, 0.0, -0.0], dtype=dtype)
        assert all_finite(*parsed({"a": edge})), dtype


def test_what_it_cannot_see_in_one_pass_is_left_to_the_per_tensor_check():
    assert not all_finite(*parsed({"a": torch.randn(3), "b": torch.randn(3).half()}))  # two dtypes
    assert not all_finite(*parsed({"a": torch.ones(3, dtype=torch.int32)}))  # not a float
    assert all_finite(*parsed({"a": torch.full((4,), 1e308, dtype=torch.float64)}))  # large, but finite
    raw, header = parsed({"a": torch.randn(3)})
    assert not all_finite(bytes(raw), header)  # read-only bytes: not viewed in place


def test_the_worker_still_refuses_a_value_that_overflows_its_dtype(tmp_path):
    from adapterfleet.worker.backend import WorkerBackend

    class Manifest:  # what parse reads of a manifest
        class base_model:
            fingerprint = ""
            name_or_path = ""

        key = "acme/big@sha256:" + "0" * 64

    config = b'{"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["q_proj"]}'
    big = torch.full((2, 8), 1e30)  # finite in float32, inf in float16
    raw = bytearray(save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": big,
                          "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(8, 2)}))
    backend = WorkerBackend(store=None, lora=None, fingerprint="f", disk_dir=tmp_path,  # type: ignore[arg-type]
                            dtype=torch.float16, device=torch.device("cpu"))
    with pytest.raises(InvalidAdapter, match=r"q_proj\.lora_A\.weight holds 16 non-finite"):
        backend.parse(Manifest, {"adapter_config.json": config, "adapter_model.safetensors": raw})  # type: ignore[arg-type]
