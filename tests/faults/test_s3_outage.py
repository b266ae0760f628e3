"""S3 unreachable from a serving fleet: the link between the store and its S3 server cut (tests/faults/netcut.py)
mid-push, mid-pull and between calls, while two workers serve resident adapters through the router.

What must hold: a push or pull that needs S3 fails UNAVAILABLE (never INTERNAL) and leaves nothing half-visible
(no version, no half-written pull directory); workers keep serving what they hold (0 failed requests), and a cold
load fails UNAVAILABLE without blaming any worker; once S3 is back the same push succeeds and the pull verifies.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

from adapterfleet.common.errors import AdapterFleetError, NotFound, Unavailable
from adapterfleet.router.breaker import State
from adapterfleet.v1 import worker_pb2
from tests.faults.conftest import StoreHandle, fault_store_config
from tests.faults.netcut import NetCut
from tests.helpers.synthetic import big_adapter
from tests.router.test_fleet import Fleet

BIG_MB = 8  # two multipart parts of 5 MiB: a cut after 2 MiB lands inside the first part's upload


@pytest.fixture
def s3_fleet(s3_server, redis_server, models, tmp_path):
    cut = NetCut(urlparse(s3_server).port).up()
    store = StoreHandle(fault_store_config(redis_server.url, cut.endpoint, tmp_path / "store"))
    client = store.client
    resident = [str(client.push_dir(p, f"acme/p{i}").manifest.key) for i, p in enumerate(models.peft[:2])]
    fleet = Fleet(store, models.base, tmp_path, workers=2)
    fleet.resident = resident
    fleet.cut = cut
    fleet.client = client
    for key in resident:  # resident on a worker before anything breaks
        fleet.api.Score(worker_pb2.ScoreRequest(adapter=key, token_ids=[1, 2, 3]), timeout=60)
    yield fleet
    cut.up()
    fleet.close()
    store.stop()
    cut.down()


class Background:
    """Score calls for the resident adapters, one after another, until stopped: they must all succeed."""

    def __init__(self, fleet):
        self.fleet, self.errors, self.served = fleet, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            key = self.fleet.resident[i % len(self.fleet.resident)]
            try:
                self.fleet.api.Score(worker_pb2.ScoreRequest(adapter=key, token_ids=[1, 2, 3 + i % 50]), timeout=30)
                self.served += 1
            except grpc.RpcError as err:
                self.errors.append(f"{err.code().name}: {err.details()}")
            i += 1
            time.sleep(0.005)

    def stop(self) -> Background:
        self._stop.set()
        self._thread.join(60)
        return self


def unavailable(call) -> str:
    with pytest.raises(AdapterFleetError) as err:
        call()
    assert isinstance(err.value, Unavailable), (err.value.code, err.value.message)
    assert "S3 at" in err.value.message, err.value.message
    return err.value.message


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir() if not p.name.startswith(".")) and all(  # not the marker
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def healthy(fleet) -> bool:
    return all(w.healthy for w in fleet.stats().workers) and all(
        b.state is State.CLOSED for _, b in fleet.router.membership.breakers())


def test_s3_cut_mid_push_leaves_no_version_and_the_push_succeeds_once_s3_is_back(s3_fleet, tmp_path):
    fleet, cut, client = s3_fleet, s3_fleet.cut, s3_fleet.client
    big = big_adapter(tmp_path / "big", BIG_MB, seed=3)
    background = Background(fleet)
    cut.cut_after(upstream=2 << 20)
    unavailable(lambda: client.push_dir(big, "t/big"))
    assert not cut.is_up and cut.cuts == 1  # the push died inside its upload, not before it
    # nothing half-visible: no version, no adapter, while S3 stays down
    with pytest.raises(NotFound):
        client.resolve("t/big")
    with pytest.raises(NotFound):
        client.list_versions("t/big")
    assert "t/big" not in [a.name for a in client.list_adapters()]
    unavailable(lambda: client.push_dir(big, "t/big"))  # the retry while S3 is down: the same answer
    time.sleep(0.5)
    cut.up()
    outcome = client.push_dir(big, "t/big")
    assert outcome.created and outcome.manifest.version == 1
    assert [m.version for m in client.list_versions("t/big")[0]] == [1]
    client.pull("t/big@1", tmp_path / "pulled")
    assert same_files(big, tmp_path / "pulled")
    assert background.stop().errors == [] and background.served > 0
    assert healthy(fleet)


def test_s3_down_during_pulls_and_cold_loads_is_unavailable_and_resident_adapters_keep_serving(s3_fleet, models,
                                                                                              tmp_path):
    fleet, cut, client = s3_fleet, s3_fleet.cut, s3_fleet.client
    big = big_adapter(tmp_path / "big", BIG_MB, seed=4)
    client.push_dir(big, "t/big")
    cold = client.push_dir(models.peft[2], "acme/cold").manifest  # pushed, never loaded by any worker
    background = Background(fleet)
    core = fleet.router
    failures_before = Counter(core.failure_reasons)

    # cut mid-pull: the store's S3 read breaks after 1 MiB; the client resumes by offset, S3 stays away
    cut.cut_after(downstream=1 << 20)
    dest = tmp_path / "pulls" / "big"
    unavailable(lambda: client.pull("t/big@1", dest))
    assert not cut.is_up
    assert list(dest.parent.iterdir()) == []  # not half-written: no directory, no leftover temporary one

    # S3 down between calls: a pull, a push and a cold load through the router are all UNAVAILABLE
    unavailable(lambda: client.pull("acme/cold@1", tmp_path / "pulls" / "cold"))
    unavailable(lambda: client.push_dir(models.peft[3], "acme/new"))
    for ref in (str(cold.key), "acme/cold@1"):
        with pytest.raises(grpc.RpcError) as err:
            fleet.api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3]), timeout=60)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert list((tmp_path / "pulls").iterdir()) == []
    time.sleep(0.5)
    assert background.stop().errors == [] and background.served > 0
    assert healthy(fleet)  # a cold load that S3 refused blames no worker
    assert set(core.retry_reasons) <= {"refused_unavailable"}  # each worker said why; no transport failure
    assert Counter(core.failure_reasons) - failures_before == {("refused", "refused_unavailable"): 2}

    cut.up()
    client.pull("t/big@1", dest)
    assert same_files(big, dest)
    client.pull("acme/cold@1", tmp_path / "pulls" / "cold")
    assert same_files(models.peft[2], tmp_path / "pulls" / "cold")
    assert fleet.api.Score(worker_pb2.ScoreRequest(adapter="acme/cold@1", token_ids=[1, 2, 3]),
                           timeout=60).adapter_key == str(cold.key)
    assert client.push_dir(models.peft[3], "acme/new").created
