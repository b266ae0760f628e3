"""A slot stack takes room for every slot when it first needs it, writes only the rows in use, and installs the
later adapters in place: every published row reads exactly what was installed (or the field's fill)."""

from __future__ import annotations

import torch

from adapterfleet.worker.lora.slot_stack import Field, Scaled, SlotStack, Transposed

FIELDS = {"A": Field(0.0, rank_dim=0), "scale": Field(1.0)}


def entry(rank: int, value: float) -> torch.Tensor:
    return torch.full((rank, 3), value)  # [rank, in]


def test_rows_in_place_after_one_allocation_with_padding_and_fills_right():
    stack = SlotStack(FIELDS, max_slots=4, device=torch.device("cpu"))
    stack = stack.added(2, {"A": entry(2, 1.0), "scale": None}, rank=2)
    storage = stack.storage["A"]
    assert storage is not None and storage.shape == (5, 2, 3)  # one row per slot and the null row
    stack = stack.added(0, {"A": entry(2, 2.0), "scale": torch.full((3,), 3.0)}, rank=2)
    assert stack.storage["A"] is storage  # written in place: no new allocation, nothing else copied
    assert stack["A"].tolist() == [[[0.0] * 3] * 2, [[1.0] * 3] * 2, [[2.0] * 3] * 2]
    assert stack["scale"][:, 0].tolist() == [1.0, 1.0, 3.0]  # the rows before the first scale read 1
    stack = stack.added(3, {"A": entry(4, 4.0), "scale": None}, rank=4)  # the rank grew: new room, padded rows
    assert stack["A"].shape == (4, 4, 3)
    assert stack["A"][:3, 2:].abs().sum() == 0 and stack["A"][1, :2].eq(1.0).all() and stack["A"][3].eq(4.0).all()
    assert stack["scale"][:, 0].tolist() == [1.0, 1.0, 3.0, 1.0]
    stack = stack.added(1, {"A": entry(1, 5.0), "scale": None}, rank=1)  # a smaller rank: zero-padded in place
    assert stack["A"][4, :1].eq(5.0).all() and stack["A"][4, 1:].abs().sum() == 0
    assert stack["scale"][4, 0] == 1.0


def test_a_removal_frees_the_room_and_the_next_install_reads_right():
    stack = SlotStack(FIELDS, max_slots=3, device=torch.device("cpu"))
    for slot, value in ((0, 1.0), (1, 2.0), (2, 3.0)):
        stack = stack.added(slot, {"A": entry(2, value), "scale": None}, rank=2)
    stack = stack.removed(1)
    assert stack["A"].shape == (3, 2, 3) and stack.nbytes() < 4 * 2 * 3 * 4 + 8 * 4  # exact: room given back
    stack = stack.added(1, {"A": entry(2, 9.0), "scale": None}, rank=2)
    assert [row[0][0] for row in stack["A"].tolist()] == [0.0, 1.0, 3.0, 9.0] and stack.order == (0, 2, 1)


def test_a_scaled_entry_is_written_times_its_factor_from_a_transposed_view():
    fields = {"B": Field(0.0, rank_dim=0)}
    b = torch.randn(5, 3)  # [out, r] as a file holds it; the stack takes [r, out] rows
    for dtype in (torch.float32, torch.float64):  # numpy's write, and torch's for any other dtype
        stack = SlotStack(fields, max_slots=2, device=torch.device("cpu"))
        stack = stack.added(1, {"B": Scaled(b.T.to(dtype), 0.37)}, rank=3)
        stack = stack.added(0, {"B": b.T.to(dtype)}, rank=3)  # unscaled, beside it
        assert torch.equal(stack["B"][1], (b * 0.37).T.to(dtype)) and torch.equal(stack["B"][2], b.T.to(dtype))
        assert stack["B"][0].abs().sum() == 0


def test_a_transposed_entry_is_written_as_its_transpose_padded_and_scaled():
    fields = {"A": Field(0.0, rank_dim=1), "B": Field(0.0, rank_dim=0)}
    a4, b4 = torch.randn(4, 5), torch.randn(6, 4)  # [r, in] and [out, r], as a file holds them; rank 4
    a2, b2 = torch.randn(2, 5), torch.randn(6, 2)  # rank 2: zero-padded to the stack's rank
    for dtype in (torch.float32, torch.float64):  # numpy's transpose, and torch's for any other dtype
        stack = SlotStack(fields, max_slots=3, device=torch.device("cpu"))
        stack = stack.added(2, {"A": Transposed(a4.to(dtype)), "B": Transposed(b4.to(dtype), 0.5)}, rank=4)
        stack = stack.added(0, {"A": Transposed(a2.to(dtype)), "B": Transposed(b2.to(dtype), 2.0)}, rank=2)
        a, b = stack["A"], stack["B"]
        assert a.shape == (3, 5, 4) and b.shape == (3, 4, 6) and a.dtype == dtype
        assert torch.equal(a[1], a4.T.to(dtype)) and torch.equal(b[1], (b4.T * 0.5).to(dtype))
        assert torch.equal(a[2, :, :2], a2.T.to(dtype)) and a[2, :, 2:].abs().sum() == 0
        assert torch.equal(b[2, :2], (b2.T * 2.0).to(dtype)) and b[2, 2:].abs().sum() == 0
        assert a[0].abs().sum() == 0 and b[0].abs().sum() == 0
