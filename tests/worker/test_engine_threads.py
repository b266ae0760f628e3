"""Only the engine's thread runs torch's intra-op threads: it keeps its count whatever other threads set later, and
the side executor's threads run torch on one thread."""

from __future__ import annotations

import threading

import torch

from adapterfleet.cli.main import _omp_threads
from adapterfleet.worker import threads
from adapterfleet.worker.engine import Engine, GenerateJob
from adapterfleet.worker.lora import LoraModel
from adapterfleet.worker.sampling import Sampling
from tests.helpers.models import load_base_model, make_base_model


def _in_thread(fn):
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def test_a_pinned_thread_keeps_its_count_when_another_thread_sets_one_later():
    pinned, reset = threading.Event(), threading.Event()
    seen: list[int] = []

    def engine_like():
        threads.pin(3)
        pinned.set()
        reset.wait(10)
        torch.randn(256, 256).sum()  # the thread's first parallel op: torch's lazy per-thread setup ran already
        seen.append(torch.get_num_threads())

    t = threading.Thread(target=engine_like)
    t.start()
    pinned.wait(10)
    _in_thread(threads.single)  # what an executor thread does at its start: it sets torch's shared default to 1
    reset.set()
    t.join()
    assert seen == [3]


def test_side_executor_threads_run_torch_on_one_thread():
    with threads.side_executor() as pool:
        assert pool.submit(torch.get_num_threads).result() == 1


def test_the_engine_runs_its_forwards_on_its_own_thread_count(tmp_path):
    model = load_base_model(make_base_model("llama", tmp_path / "base", seed=0))
    counts: list[int] = []
    model.register_forward_pre_hook(lambda _m, _a: counts.append(torch.get_num_threads()))
    engine = Engine(model, LoraModel(model, max_slots=1), pad_id=0, device=torch.device("cpu"), threads=3)
    done = threading.Event()
    engine.start()
    try:
        _in_thread(threads.single)  # another thread's count changes nothing on the engine's
        engine.submit(GenerateJob([5, 6, 7], -1, 3, Sampling(), frozenset(),
                                  lambda _t, finished, _why, _lp=None: finished and done.set(), print))
        assert done.wait(60)
    finally:
        engine.stop()
    assert counts and set(counts) == {3}


def test_engine_threads_default_to_the_cpus_this_process_may_use():
    assert threads.engine_threads(5) == 5
    assert threads.engine_threads(0) == threads.cpus() >= 1


def test_a_cgroup_cpu_limit_caps_the_default(tmp_path):
    mask = threads.cpus(tmp_path / "absent")  # no cgroup v2 file: the affinity mask alone
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")  # no limit
    assert threads.cpus(cpu_max) == mask
    cpu_max.write_text("150000 100000\n")  # 1.5 CPUs: rounded up
    assert threads.cpus(cpu_max) == min(mask, 2)
    cpu_max.write_text("50000 100000\n")
    assert threads.cpus(cpu_max) == 1
    cpu_max.write_text("garbage\n")
    assert threads.cpus(cpu_max) == mask


def test_omp_num_threads_sets_the_cli_default():
    assert [_omp_threads(v) for v in ("4", " 2 ", "4,2", "", "auto", "0")] == [4, 2, 4, 0, 0, 0]
