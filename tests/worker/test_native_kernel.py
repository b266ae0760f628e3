"""The native LoRA kernel (``adapterfleet.worker.lora.native``): its numbers, its refusals, and how a worker takes it.

The kernel adds ``(x[i] @ a[rows[i]]) @ b[rows[i]]`` to ``out[i]`` for every item whose stack row is not 0. Here it is
checked against that formula in float64, for ranks it has a fixed-size path for and ranks it has not, with strided
inputs, for decode rows and for runs of one row (a prefill's tokens, taken a few at a time); against out-of-range rows
(refused before anything is written); as a build that does not load (refused with a message, the worker keeps torch's
ops); and as the worker loads it at start. Routes through a whole model, against PEFT, are in ``test_lora_routes.py``
and ``test_grouped_rows.py``.
"""

from __future__ import annotations

import logging

import pytest
import torch

from adapterfleet.worker.engine import Engine
from adapterfleet.worker.lora import LoraModel, native
from adapterfleet.worker.server import start_native_kernel

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def kernel(native_kernel):
    if native_kernel is None:
        pytest.skip("no C++ compiler here: the native kernel cannot be built")
    return native_kernel


def _want(x, a, b, rows, out):
    want = out.double().clone()
    for i, r in enumerate(rows.tolist()):
        if r:
            want[i] += (x[i].double() @ a[r].double()) @ b[r].double()
    return want


@pytest.mark.parametrize("rank", (1, 5, 8, 16, 32, 64, 100))
def test_each_item_gets_its_own_rows_term(kernel, rank):
    gen = torch.Generator().manual_seed(rank)
    slots, d_in, d_out, n = 5, 96, 72, 11
    a = torch.randn(slots, d_in, rank, generator=gen)
    b = torch.randn(slots, rank, d_out, generator=gen)
    a[0], b[0] = 0, 0
    rows = torch.tensor([3, 0, 1, 1, 4, 2, 0, 3, 3, 2, 4])  # repeats, base rows, any order
    x = torch.randn(n, d_in + 7, generator=gen)[:, 3 : 3 + d_in]  # rows that are not contiguous with each other
    out = torch.randn(n, d_out + 5, generator=gen)[:, :d_out]
    before = out.clone()
    want = _want(x, a, b, rows, out)
    assert kernel.takes(x, a, b, out)
    got = kernel.add_rows(x, a, b, rows, out)
    assert got is out
    scale = want.abs().max().item()
    assert (out.double() - want).abs().max().item() <= 1e-5 * scale
    assert torch.equal(out[1], before[1]) and torch.equal(out[6], before[6]), "a row on no adapter was written"


@pytest.mark.parametrize("rank", (5, 8, 16, 32, 64))
def test_runs_of_one_row_get_what_each_item_gets_alone(kernel, rank):
    """A prefill's tokens come as runs of one stack row, which the kernel takes a few items at a time: every item's
    result is the formula's, and bit for bit what the item gets on its own, wherever the run's blocks fall."""
    gen = torch.Generator().manual_seed(100 + rank)
    slots, d_in, d_out = 4, 40, 53  # 53 outputs: three chunks of 16 and a tail
    a = torch.randn(slots, d_in, rank, generator=gen)
    b = torch.randn(slots, rank, d_out, generator=gen)
    a[0], b[0] = 0, 0
    runs = [(1, 1), (2, 2), (0, 3), (3, 4), (1, 5), (2, 7), (3, 16), (1, 19), (2, 33)]  # (stack row, run length)
    rows = torch.tensor([r for r, n in runs for _ in range(n)])
    n = rows.numel()
    x = torch.randn(n, d_in + 3, generator=gen)[:, 1 : 1 + d_in]
    out = torch.randn(n, d_out + 2, generator=gen)[:, :d_out]
    alone = out.clone()
    want = _want(x, a, b, rows, out)
    kernel.add_rows(x, a, b, rows, out)
    assert (out.double() - want).abs().max().item() <= 1e-5 * want.abs().max().item()
    for i in range(n):
        kernel.add_rows(x[i : i + 1], a, b, rows[i : i + 1], alone[i : i + 1])
    assert torch.equal(out, alone), "an item's term depends on the run it came in"


def test_out_of_range_rows_are_refused_before_anything_is_written(kernel):
    a, b = torch.randn(3, 8, 4), torch.randn(3, 4, 6)
    x, out = torch.randn(2, 8), torch.randn(2, 6)
    before = out.clone()
    for bad in ([1, 3], [-1, 1]):
        with pytest.raises(RuntimeError, match="stack row out of range"):
            kernel.add_rows(x, a, b, torch.tensor(bad), out)
        assert torch.equal(out, before)


def test_tensors_it_does_not_take_are_left_to_torch(kernel):
    a, b = torch.randn(3, 8, 4), torch.randn(3, 4, 6)
    x, out = torch.randn(2, 8), torch.randn(2, 6)
    assert kernel.takes(x, a, b, out)
    assert not kernel.takes(x.double(), a.double(), b.double(), out.double())
    assert not kernel.takes(x.bfloat16(), a.bfloat16(), b.bfloat16(), out.bfloat16())
    assert not kernel.takes(x, a.transpose(1, 2).contiguous().transpose(1, 2), b, out)  # a stack that is a view
    assert not kernel.takes(torch.randn(8, 2).t(), a, b, out)  # x with strided columns
    assert kernel.takes(x, a, b) and not kernel.takes(x, a, b, out.t())  # no out yet: the caller makes one


def test_a_build_is_keyed_by_source_torch_and_cpu(kernel, tmp_path):
    again = native.build(tmp_path)  # loaded in this process already: the same op, nothing compiled
    assert again is kernel
    assert native.load(tmp_path) is kernel
    assert len(kernel.key) == 16 and kernel.key == native.key()


def test_a_build_that_does_not_load_is_refused_and_torch_serves(tmp_path, monkeypatch, caplog, zoo):
    monkeypatch.setattr(native, "key", lambda: "0123456789abcdef")
    library = tmp_path / "0123456789abcdef" / "lora_rows.so"
    library.parent.mkdir()
    library.write_bytes(b"not a shared library")
    with pytest.raises(native.KernelUnavailable, match=r"does not load.*delete that directory"):
        native.load(tmp_path)
    with pytest.raises(native.KernelUnavailable, match="does not load"):
        native.build(tmp_path)  # found there: not rebuilt over, refused the same way
    from tests.helpers.models import load_base_model

    model = load_base_model(zoo.base("llama"))
    lora = LoraModel(model, max_slots=2)
    engine = Engine(model, lora, pad_id=0, device=torch.device("cpu"))
    with caplog.at_level(logging.WARNING):
        start_native_kernel(lora, engine, str(tmp_path))
    assert lora.ctx.low_rank is None and engine.attention is None
    assert "native LoRA kernel unavailable, decode steps run torch's ops" in caplog.text
    assert "not a shared library" in caplog.text or "does not load" in caplog.text


def test_a_directory_it_cannot_write_is_refused_with_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(native, "key", lambda: "00000000000000aa")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(native.KernelUnavailable, match="writable --native-dir"):
        native.build(blocker / "native")
    assert native.load(blocker / "native") is None  # nothing there: the worker would build in the background


def test_a_worker_takes_a_built_kernel_at_start(kernel, tmp_path, zoo):
    from tests.helpers.models import load_base_model

    model = load_base_model(zoo.base("llama"))
    lora = LoraModel(model, max_slots=2)
    engine = Engine(model, lora, pad_id=0, device=torch.device("cpu"))
    start_native_kernel(lora, engine, str(tmp_path))  # loaded in this process: found at once, not in the background
    assert lora.ctx.low_rank is kernel
    assert engine.attention is kernel.attention and isinstance(kernel.attention, native.DecodeAttention)
    other = LoraModel(model, max_slots=2)
    start_native_kernel(other, None, str(tmp_path))  # --no-decode-attention: the LoRA kernel only
    assert other.ctx.low_rank is kernel


def test_a_missing_build_is_made_in_the_background(tmp_path, monkeypatch):
    """A directory without a build: the worker starts at once and the kernel arrives from a thread of its own."""
    import threading

    built = threading.Event()
    compiled = []

    def fake_compile(library, namespace):  # the real compiler is exercised by the session's build
        compiled.append(namespace)
        library.write_bytes(b"")

    class Lora:
        class ctx:  # stands in for LoraModel.ctx
            low_rank = None

        def use_kernel(self, k):
            self.ctx.low_rank = k

    class StandInEngine:
        attention = None

        def use_attention(self, attention):
            self.attention = attention
            built.set()

    monkeypatch.setattr(native, "key", lambda: "fedcba9876543210")
    monkeypatch.setattr(native, "_compile", fake_compile)
    monkeypatch.setattr(native, "_load", lambda library, k: native.LowRankKernel(lambda *a: None, k))
    lora, engine = Lora(), StandInEngine()
    start_native_kernel(lora, engine, str(tmp_path))  # type: ignore[arg-type]
    assert built.wait(30), "the background build never handed its kernel over"
    assert lora.ctx.low_rank.key == "fedcba9876543210" and compiled == ["adapterfleet_fedcba9876543210"]
    assert engine.attention is lora.ctx.low_rank.attention
    assert (tmp_path / "fedcba9876543210" / "lora_rows.so").is_file()


def test_the_kernel_leaves_the_calling_threads_torch_threads_as_they_are(kernel):
    """The worker's engine thread runs torch at ``--threads`` (``threads.pin``) while every other thread runs it at
    one. A kernel built on ``at::parallel_for`` re-initialised the calling thread's count from the one last set by
    any thread on its first call, and the engine then ran every op on one thread (base-model waves at 0.65-0.70x)."""
    import threading

    from adapterfleet.worker import threads

    seen = {}
    a, b = torch.randn(3, 64, 16), torch.randn(3, 16, 32)
    x, out = torch.randn(8, 64), torch.zeros(8, 32)
    pinned, others_done = threading.Event(), threading.Event()

    def engine():
        threads.pin(2)
        pinned.set()
        others_done.wait(30)  # another thread has set one thread since: the process-wide count is now 1
        kernel.add_rows(x, a, b, torch.tensor([1, 2, 0, 1, 2, 1, 0, 2]), out)
        seen["after"] = torch.get_num_threads()

    def other():
        pinned.wait(30)
        threads.single()
        others_done.set()

    workers = [threading.Thread(target=engine), threading.Thread(target=other)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(60)
    assert seen == {"after": 2}


def test_builds_racing_for_one_directory_compile_once(tmp_path, monkeypatch):
    """Two workers (here: threads) starting on an empty --native-dir at once: one compiles, the other waits for it
    and loads its library."""
    import threading
    import time

    compiled = []

    def slow_compile(library, namespace):
        compiled.append(namespace)
        time.sleep(0.5)  # long enough for the other build to arrive while this one holds the lock
        library.write_bytes(b"")

    monkeypatch.setattr(native, "key", lambda: "0000000000000abc")
    monkeypatch.setattr(native, "_compile", slow_compile)
    monkeypatch.setattr(native, "_load", lambda library, k: native.LowRankKernel(lambda *a: None, k))
    got = []
    racers = [threading.Thread(target=lambda: got.append(native.build(tmp_path))) for _ in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join(30)
    assert compiled == ["adapterfleet_0000000000000abc"] and len(got) == 2
