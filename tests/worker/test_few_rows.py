"""Few-row GEMMs (a decode step's rows) take the transposed form, give F.linear's numbers, and leave one-row and
many-row products (prefills) to F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adapterfleet.worker.lora import AdapterWeights, LoraModel, few_rows
from adapterfleet.worker.model_host import contiguous_head
from tests.helpers.models import load_base_model, make_base_model, make_peft_adapter


@pytest.fixture
def counted(monkeypatch):
    calls: list[tuple[int, ...]] = []
    real = few_rows.linear_t

    def linear_t(x2, weight):
        calls.append(tuple(x2.shape))
        return real(x2, weight)

    monkeypatch.setattr(few_rows, "linear_t", linear_t)
    return calls


@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (5, 24), (64, 24), (65, 24), (3, 1, 24), (4, 3, 24)])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_gives_f_linear_numbers_in_its_shape(shape, bias, counted):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(shape, generator=g), torch.randn(40, 24, generator=g)
    b = torch.randn(40, generator=g) if bias else None
    y = few_rows.linear(x, w, b)
    torch.testing.assert_close(y, F.linear(x, w, b))
    assert y.shape == (*shape[:-1], 40) and y.is_contiguous()
    rows = x.numel() // 24
    assert bool(counted) == (few_rows.MIN_ROWS <= rows <= few_rows.MAX_ROWS)


def test_a_strided_input_and_another_dtype_are_handled(counted):
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 7, 24, generator=g)
    w = torch.randn(40, 24, generator=g)
    last = hidden[:, -1:, :]  # the engine's logits_to_keep=1 slice: not contiguous
    torch.testing.assert_close(few_rows.linear(last, w), F.linear(last, w))
    assert counted == [(4, 24)]
    with pytest.raises(RuntimeError):  # a dtype the weight does not have: F.linear's own error, as without it
        few_rows.linear(last.double(), w)
    assert counted == [(4, 24)]


def test_the_head_and_every_lora_layer_take_it_in_a_decode_step_and_not_in_a_prefill(tmp_path, counted):
    base = make_base_model("llama", tmp_path / "base", seed=0)
    adapter = make_peft_adapter(base, tmp_path / "a", seed=1)
    model = load_base_model(base)
    contiguous_head(model)
    lora = LoraModel(model, max_slots=2)
    lora.install(0, AdapterWeights.from_dir(adapter))
    ids = torch.randint(1, 100, (3, 40), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode(), lora.rows([0, -1, 0]):
        model(input_ids=ids, logits_to_keep=1)
        prefill = list(counted)
        counted.clear()
        model(input_ids=ids[:, :1])  # three rows of one token: a decode step's shape
    # the prefill's 120 rows go to F.linear; its head sees 3 rows (logits_to_keep=1) and takes the transposed form
    assert prefill == [(3, model.config.hidden_size)]
    wrapped = len(lora.slot_modules(0))
    assert len(counted) == wrapped + 1 and all(rows == 3 for rows, _ in counted), counted


def test_a_head_that_is_not_a_plain_linear_keeps_its_forward():
    class Head(nn.Linear):
        pass

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = Head(4, 6)

        def get_output_embeddings(self):
            return self.head

    m = Model()
    contiguous_head(m)
    assert "forward" not in vars(m.head)
    plain = nn.Linear(4, 6)
    m.head = plain  # type: ignore[assignment]
    contiguous_head(m)
    assert "forward" in vars(plain)
    x = torch.randn(3, 4)
    torch.testing.assert_close(plain(x), F.linear(x, plain.weight, plain.bias))
