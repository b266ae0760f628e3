"""Few-token rows laid out by stack row (``RowPlan.grouped``): the layout, and the same numbers as embedding_bag; and
the native kernel (``lora/native.py``) on the same rows.

A decode step whose rows use a run of stack rows with few holes computes its low-rank terms as two ``bmm`` over
views of the stacks instead of ``embedding_bag`` gathers. The layout is checked directly; the numbers against the
embedding_bag route (``HOLE_LIMIT`` < 0 turns grouping off) on a model with six distinct adapters, over row sets
that reorder, repeat, skip and mix in base rows; PEFT parity of both routes is in ``test_lora_routes.py``.
"""

from __future__ import annotations

import random

import pytest
import torch

import adapterfleet.worker.lora.linear as lora_linear
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.lora import plan as row_plan
from adapterfleet.worker.lora.linear import BAG_TOKENS
from adapterfleet.worker.lora.plan import RowPlan
from tests.helpers.models import load_base_model

CPU = torch.device("cpu")
N_ADAPTERS = 6


def _grouped(local: list[int], tokens: int = 1, k: int = 1):
    return RowPlan(local, k, CPU, frozenset({"A", "B"})).grouped(tokens)


def test_rows_in_stack_order_are_viewed_as_they_are():
    g = _grouped([1, 2, 3, 4])
    assert (g.lo, g.span, g.per, g.identity, g.used) == (1, 4, 1, True, None)


def test_reordered_rows_get_their_stack_rows_places():
    g = _grouped([4, 2, 3])
    assert (g.lo, g.span, g.per, g.identity, g.used) == (2, 3, 1, False, None)
    assert g.pos.tolist() == [2, 0, 1]


def test_repeated_adapters_and_base_rows_are_padded_and_skipped():
    g = _grouped([1, 0, 1, 2])
    assert (g.lo, g.span, g.per, g.identity) == (1, 2, 2, False)
    assert g.pos.tolist() == [0, 1, 2] and g.used.tolist() == [0, 2, 3]


def test_tokens_and_expansion_make_items_per_token():
    g = _grouped([2, 1], tokens=2, k=2)  # rows 2, 2, 1, 1 (expanded), two tokens each: eight items
    assert (g.lo, g.span, g.per) == (1, 2, 4)
    assert g.pos.tolist() == [4, 5, 6, 7, 0, 1, 2, 3] and g.used is None


@pytest.mark.parametrize("local", ([1, 5], [1, 2, 5, 6], [0, 0]))
def test_too_many_holes_or_no_adapter_take_no_grouping(local):
    assert _grouped(local) is None


def test_padding_past_the_limit_takes_no_grouping():
    assert _grouped([1] * 6 + [2, 3]) is None  # 3 stack rows x 6 places for 8 items
    assert _grouped([1] * 4 + [2]) is not None  # 2 x 4 places for 5 items


@pytest.fixture(scope="module")
def six(zoo) -> tuple[torch.nn.Module, LoraModel]:
    base = zoo.base("llama")
    model = load_base_model(base)
    lora = LoraModel(model, max_slots=N_ADAPTERS + 2)
    for i in range(N_ADAPTERS):
        d = zoo.custom("llama", f"grouped-{i}", seed=100 + i, r=4 + 2 * (i % 3), lora_alpha=8,
                       target_modules=["q_proj", "v_proj", "o_proj", "down_proj"])
        lora.install((i * 5) % (N_ADAPTERS + 2), AdapterWeights.from_dir(d))  # slots out of install order
    return model, lora


def _row_sets() -> list[list[int]]:
    rng = random.Random(0)
    slots = [(i * 5) % (N_ADAPTERS + 2) for i in range(N_ADAPTERS)]
    sets = [slots, slots[::-1], [slots[2], -1, slots[2], slots[3]], [slots[0]] * 3 + [slots[1]]]
    for _ in range(6):
        sets.append([rng.choice([*slots, -1]) for _ in range(rng.randint(2, 9))])
    return sets


def _matches_embedding_bag(model, lora, tokens: int, monkeypatch, route: str, **ctx) -> None:
    """Every row set of ``_row_sets`` through ``route`` (the model as it stands, with ``ctx`` set on ``lora.ctx``)
    gives the logits of the embedding_bag route (``HOLE_LIMIT`` < 0 turns grouping off), within 1e-5."""
    gen = torch.Generator().manual_seed(tokens)
    for rows in _row_sets():
        ids = torch.randint(3, model.config.vocab_size, (len(rows), tokens), generator=gen)
        with torch.no_grad():
            with monkeypatch.context() as m:
                m.setattr(row_plan, "HOLE_LIMIT", -1.0)  # embedding_bag only
                with lora.rows(rows):
                    want = model(input_ids=ids).logits
            with monkeypatch.context() as m:
                for name, value in ctx.items():
                    m.setattr(lora.ctx, name, value)
                with lora.rows(rows):
                    got = model(input_ids=ids).logits
        diff = (got - want).abs().max().item()
        assert diff <= 1e-5, f"rows {rows}, {tokens} tokens: max |{route} - embedding_bag| = {diff:.2e}"


@pytest.mark.parametrize("tokens", range(1, BAG_TOKENS + 1))
def test_grouped_rows_give_embedding_bags_numbers(six, tokens, monkeypatch):
    model, lora = six
    taken = []
    real = lora_linear.LoraLinear._grouped
    monkeypatch.setattr(lora_linear.LoraLinear, "_grouped",
                        lambda self, *a: taken.append(1) or real(self, *a))
    _matches_embedding_bag(model, lora, tokens, monkeypatch, "grouped")
    assert taken, "no forward took the grouped route; the test is void"


@pytest.mark.parametrize("tokens", range(1, BAG_TOKENS + 1))
def test_native_kernel_gives_embedding_bags_numbers(six, tokens, native_kernel, monkeypatch):
    """Ranks 4, 6 and 8 in one stack (padded to 8), rows reordered, repeated and on the base model."""
    if native_kernel is None:
        pytest.skip("no C++ compiler here: the native kernel cannot be built")
    model, lora = six
    ran = []
    real = native_kernel.add_rows
    monkeypatch.setattr(native_kernel, "add_rows", lambda *a: ran.append(1) or real(*a))
    _matches_embedding_bag(model, lora, tokens, monkeypatch, "native kernel", low_rank=native_kernel)
    assert ran, "no forward took the native kernel; the test is void"
