"""Caches safe to share: workers that share one disk-cache directory never fail a load because of each other, and
a load that fails (DATA_LOSS, an incompatible adapter) leaves no entry behind: not listed, not announced, not on
disk."""

from __future__ import annotations

import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from adapterfleet.common import tiers
from adapterfleet.v1 import common_pb2, registry_pb2, registry_pb2_grpc, worker_pb2, worker_pb2_grpc
from adapterfleet.worker.backend import LOCKS, TMP_PREFIX, WorkerBackend
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import start_worker


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        wide = make_base_model("llama", root / "wide", seed=0, hidden_size=48)
        adapter = make_peft_adapter(base, root / "a", seed=1, r=4, target_modules=["q_proj", "v_proj"])
        other = make_peft_adapter(wide, root / "other", seed=1, r=4, target_modules=["q_proj"])
    return base, adapter, other, root


def variants(adapter: Path, root: Path, n: int) -> list[Path]:
    """``n`` distinct adapters: the same config, weights perturbed with a different seed each."""
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    out = []
    for i in range(n):
        d = root / f"v{i}"
        if not d.exists():
            d.mkdir()
            rng = np.random.default_rng(i)
            save_file({k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in tensors.items()},
                      str(d / "adapter_model.safetensors"))
            (d / "adapter_config.json").write_bytes((adapter / "adapter_config.json").read_bytes())
        out.append(d)
    return out


def leftovers(disk: Path) -> list[str]:
    return [p.name for p in disk.iterdir() if p.name.startswith(TMP_PREFIX)]


def test_two_workers_sharing_a_disk_cache_load_24_adapters_concurrently(store, models, tmp_path):
    base, adapter, _, root = models
    client = store.client()
    keys = [str(client.push_dir(d, f"acme/v{i}").manifest.key) for i, d in enumerate(variants(adapter, root, 24))]
    disk = tmp_path / "shared-cache"
    workers = [start_worker(WorkerConfig(base_model=str(base), store=store.address, max_slots=8,
                                         disk_dir=str(disk))) for _ in range(2)]
    try:
        stubs = [worker_pb2_grpc.WorkerStub(grpc.insecure_channel(address)) for address, _, _ in workers]
        calls = [(stub, key, tier) for key in keys for stub in stubs
                 for tier in (common_pb2.TIER_DISK, common_pb2.TIER_ACTIVE)]
        barrier = threading.Barrier(len(calls), timeout=60)

        def load(call):
            stub, key, tier = call
            barrier.wait()
            try:  # a deadline: a load that never ends fails the test, and its thread ends (the pool's exit waits)
                stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=key, tier=tier), timeout=120)
            except grpc.RpcError as err:
                return f"{err.code().name}: {err.details()}"
            return None

        with ThreadPoolExecutor(len(calls)) as pool:
            failures = [f for f in pool.map(load, calls) if f]
        assert failures == []
        for stub in stubs:
            resident = stub.ListResident(worker_pb2.ListResidentRequest(), timeout=60).adapters
            assert sorted(a.key for a in resident) == sorted(keys)
            reply = stub.Score(worker_pb2.ScoreRequest(adapter=keys[5], token_ids=[1, 2, 3]), timeout=120)
            assert len(reply.logprobs) == 2
        entries = [p for p in disk.iterdir() if not p.name.startswith(".")]
        assert len(entries) == 24 and leftovers(disk) == []
    finally:
        for _, _, stop in workers:
            stop()


def test_backends_sharing_a_directory_never_see_each_others_half_written_entries(store, models, tmp_path):
    """Many threads, each with its own backend over one directory (as separate workers would be), save, read and
    drop the same entries at once: no error, and every read is either a miss or the verified files."""
    _, adapter, _, root = models
    client = store.client()
    pushed = [client.push_dir(d, f"acme/r{i}").manifest for i, d in enumerate(variants(adapter, root, 4))]
    files = {str(m.key): {e.name: (root / f"v{i}" / e.name).read_bytes() for e in m.files}
             for i, m in enumerate(pushed)}
    disk = tmp_path / "race"

    def backend() -> WorkerBackend:
        return WorkerBackend(None, None, fingerprint="", disk_dir=disk, dtype=torch.float32,  # type: ignore[arg-type]
                             device=torch.device("cpu"))

    barrier = threading.Barrier(16)

    def worker(i: int) -> list[str]:
        b, problems = backend(), []
        barrier.wait()
        for round_ in range(20):
            m = pushed[(i + round_) % len(pushed)]
            key = str(m.key)
            try:
                if (i + round_) % 5 == 4:
                    b.drop_disk(key)
                else:
                    b.save_disk(key, m, files[key])
                got = b.load_disk(key)
                if got is not None and got[1] != files[key]:
                    problems.append(f"{key}: files differ")
            except Exception as exc:  # noqa: BLE001 - collected: the test asserts there are none
                problems.append(f"{key}: {exc!r}")
        return problems

    with ThreadPoolExecutor(16) as pool:
        problems = [p for ps in pool.map(worker, range(16)) for p in ps]
    assert problems == []
    assert leftovers(disk) == []
    assert len(list((disk / LOCKS).iterdir())) <= 256  # lock stripes, bounded


def announced(store, worker_id: str) -> list[str]:
    registry = registry_pb2_grpc.RegistryStub(grpc.insecure_channel(store.address))
    for w in registry.ListWorkers(registry_pb2.ListWorkersRequest()).workers:
        if w.id == worker_id:
            return [a.key for a in w.adapters]
    raise AssertionError(f"worker {worker_id} is not registered")


def test_a_failed_load_leaves_no_entry_listed_announced_or_on_disk(store, models, s3_client, tmp_path):
    from tests.helpers.servers import WorkerHandle

    base, adapter, other, _ = models
    client = store.client()
    m = client.push_dir(adapter, "acme/tampered").manifest
    blob = f"sha256/{m.file('adapter_model.safetensors').sha256}"
    body = bytearray(s3_client.get_object(Bucket=store.config.s3.bucket, Key=blob)["Body"].read())
    body[-3] ^= 0x40
    s3_client.put_object(Bucket=store.config.s3.bucket, Key=blob, Body=bytes(body))
    incompatible = str(client.push_dir(other, "acme/other").manifest.key)
    disk = tmp_path / "cache"
    worker = WorkerHandle(WorkerConfig(base_model=str(base), store=store.address, max_slots=2, disk_dir=str(disk),
                                       announce_every_s=0.1))
    try:
        stub = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(worker.address))
        for tier in (common_pb2.TIER_DISK, common_pb2.TIER_HOST, common_pb2.TIER_ACTIVE):
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=str(m.key), tier=tier))
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(worker_pb2.ScoreRequest(adapter=str(m.key), token_ids=[1, 2, 3]))
        assert err.value.code() == grpc.StatusCode.DATA_LOSS
        with pytest.raises(grpc.RpcError) as err:  # fetched, then refused by the base: never saved to disk
            stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=incompatible))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert list(stub.ListResident(worker_pb2.ListResidentRequest()).adapters) == []
        assert worker.core.cache.tier_bytes(tiers.DISK) == 0
        assert not disk.exists() or [p for p in disk.iterdir() if not p.name.startswith(".")] == []
        time.sleep(0.5)  # a few announcements
        assert announced(store, worker.id) == []
    finally:
        worker.stop()


def test_a_worker_takes_up_what_its_disk_cache_already_holds_within_its_budget(store, models, tmp_path):
    """A restart (or a worker beside another on one directory) finds entries on disk: they join the disk tier and
    count against its budget, the oldest go first when they exceed it, a save that a crash cut off long ago is
    removed, and what is not an entry is left alone."""
    import os

    from adapterfleet.common.tiers import DISK
    from adapterfleet.worker.cache import AdapterCache

    _, adapter, _, root = models
    client = store.client()
    pushed = [client.push_dir(d, f"acme/k{i}").manifest for i, d in enumerate(variants(adapter, root, 3))]
    disk = tmp_path / "disk"
    before = WorkerBackend(None, None, fingerprint="", disk_dir=disk, dtype=torch.float32,  # type: ignore[arg-type]
                           device=torch.device("cpu"))
    sizes = []
    for i, m in enumerate(pushed):
        files = {e.name: (root / f"v{i}" / e.name).read_bytes() for e in m.files}
        sizes.append(before.save_disk(str(m.key), m, files))
        entry = disk / m.digest.removeprefix("sha256:")
        os.utime(entry, (1_000_000 + i, 1_000_000 + i))  # saved in this order, the first the oldest
    stale, fresh, foreign = disk / f"{TMP_PREFIX}crashed", disk / f"{TMP_PREFIX}in-flight", disk / "notes"
    for d in (stale, fresh, foreign):
        d.mkdir()
    os.utime(stale, (1_000_000, 1_000_000))

    after = WorkerBackend(None, None, fingerprint="", disk_dir=disk, dtype=torch.float32,  # type: ignore[arg-type]
                          device=torch.device("cpu"))
    cache = AdapterCache(after, max_slots=1, host_bytes=1 << 30, disk_bytes=sizes[1] + sizes[2])
    assert cache.adopt_disk() == 2
    assert [(e.key, e.tier, e.disk_bytes) for e in cache.entries()] == sorted(
        (str(m.key), DISK, s) for m, s in zip(pushed[1:], sizes[1:], strict=True))
    assert not cache.needs_fetch(str(pushed[2].key)) and cache.needs_fetch(str(pushed[0].key))
    assert not (disk / pushed[0].digest.removeprefix("sha256:")).exists()  # the oldest: over the budget
    assert after.load_disk(str(pushed[2].key)) is not None
    assert not stale.exists() and fresh.exists() and foreign.exists()
    assert AdapterCache(after, max_slots=1, host_bytes=0, disk_bytes=0).adopt_disk() == 0  # no disk tier: untouched
    assert len(after.scan_disk()) == 2


def test_a_disk_cache_whose_locks_cannot_be_made_is_a_miss_not_an_error(tmp_path):
    """A read-only or broken disk: reading an entry is a miss (the store has the bytes), not INTERNAL."""
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / LOCKS).write_text("not a directory")  # no lock file can be made under it
    backend = WorkerBackend(None, None, fingerprint="", disk_dir=disk, dtype=torch.float32,  # type: ignore[arg-type]
                            device=torch.device("cpu"))
    assert backend.load_disk("acme/a@sha256:" + "ab" * 32) is None
