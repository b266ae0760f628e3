"""Constant eviction through every tier under concurrent load: 48 adapters of 32 KB, 4 slots and 1 MB host and disk
tiers per worker (a disk tier that is full, as every long-running worker's eventually is), 6 callers through the
router.

What must hold: every request is served (0 failures); no slot is lost (each reserved slot belongs to an entry).
"""

from __future__ import annotations

import random
import threading
import time

import grpc

from adapterfleet.router.config import RouterConfig
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.servers import WorkerHandle, start_router


def test_constant_eviction_through_every_tier_loses_no_request_and_no_slot(store, models, tmp_path):
    client = store.client()
    keys = [str(client.push_dir(models.synthetic(i, r=64), f"acme/e{i}").manifest.key) for i in range(48)]
    workers = [WorkerHandle(WorkerConfig(base_model=str(models.base), store=store.address, max_slots=4,
                                         host_bytes=1 << 20, disk_bytes=1 << 20, disk_dir=str(tmp_path / f"w{i}"),
                                         slot_wait_s=1.0, announce_every_s=0.2, announce_ttl_s=2.0))
               for i in range(2)]
    address, router, stop_router = start_router(RouterConfig(store=store.address, poll_s=0.1))
    channel = grpc.insecure_channel(address)
    api = worker_pb2_grpc.WorkerStub(channel)
    errors: list[str] = []
    served = [0]
    done = threading.Event()
    try:
        deadline = time.monotonic() + 10
        while len(router.membership.views()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)

        def caller(k: int) -> None:
            rng = random.Random(k)
            for _ in range(150):
                if done.is_set():
                    return
                try:
                    api.Score(worker_pb2.ScoreRequest(adapter=keys[rng.randrange(len(keys))], token_ids=[1, 2, 3]),
                              timeout=60)
                    served[0] += 1
                except grpc.RpcError as err:
                    errors.append(f"{err.code().name}: {err.details()[:200]}")
                    done.set()  # one is enough: stop before every caller waits out slot_wait_s

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        leaked = []
        for w in workers:
            cache = w.core.cache
            slotted = {e.slot for e in cache.entries() if e.slot is not None}
            leaked += [(w.address, slot) for slot in cache._slots if slot not in slotted and not cache.loading()]
        assert errors == []
        assert leaked == []
        assert served[0] == 6 * 150
    finally:
        channel.close()
        stop_router()
        for w in workers:
            w.stop()
