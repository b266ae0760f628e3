"""A blob changed in S3 behind the store's back (one byte of an adapter's safetensors), under a serving fleet: a
store, two workers, a router.

What must hold: a cold load of that adapter fails DATA_LOSS on whichever worker tries it (and again on the next
request: nothing bad is cached), through every kind of ref; the router neither retries it nor blames the worker;
a pull fails DATA_LOSS and writes nothing; the workers keep serving every other adapter meanwhile (0 failures).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter

import grpc
import pytest

from adapterfleet.common.errors import ChecksumMismatch, InvalidArgument
from adapterfleet.router.breaker import State
from adapterfleet.v1 import store_pb2, worker_pb2, worker_pb2_grpc
from tests.helpers.s3_blobs import flip_bit_in_blob
from tests.router.test_fleet import Fleet


def missing(client, digests: list[str]) -> list[str]:
    return list(client._call("MissingBlobs", store_pb2.MissingBlobsRequest(sha256=digests)).sha256)


@pytest.fixture
def tampered_fleet(store, models, s3_client, tmp_path):
    client = store.client()
    pushed = [client.push_dir(p, f"acme/p{i}").manifest for i, p in enumerate(models.peft[:3])]
    flip_bit_in_blob(s3_client, store, pushed[0].file("adapter_model.safetensors").sha256)
    fleet = Fleet(store, models.base, tmp_path, workers=2)
    fleet.pushed, fleet.client = pushed, client
    yield fleet
    fleet.close()


def test_a_tampered_blob_is_data_loss_on_load_and_pull_and_the_workers_keep_serving(tampered_fleet, models,
                                                                                    tmp_path):
    fleet = tampered_fleet
    bad, good = fleet.pushed[0], fleet.pushed[1:]
    for m in good:  # resident before the bad one is asked for
        fleet.api.Score(worker_pb2.ScoreRequest(adapter=str(m.key), token_ids=[1, 2, 3]), timeout=60)
    errors: list[str] = []
    served = [0]
    stop = threading.Event()

    def background() -> None:
        i = 0
        while not stop.is_set():
            ref = f"acme/p{1 + i % 2}@1"
            try:
                if i % 2:
                    fleet.api.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3 + i % 40]), timeout=60)
                else:
                    list(fleet.api.Generate(worker_pb2.GenerateRequest(adapter=ref, prompt_ids=[4, 5, 6],
                                                                       max_new_tokens=4), timeout=60))
                served[0] += 1
            except grpc.RpcError as err:
                errors.append(f"{ref}: {err.code().name}: {err.details()}")
            i += 1

    thread = threading.Thread(target=background)
    thread.start()
    core = fleet.router
    retries, reasons = core.retries, Counter(core.failure_reasons)
    try:
        calls = {
            "score by digest": lambda: fleet.api.Score(worker_pb2.ScoreRequest(
                adapter=str(bad.key), token_ids=[1, 2, 3]), timeout=60),
            "generate by version": lambda: list(fleet.api.Generate(worker_pb2.GenerateRequest(
                adapter="acme/p0@1", prompt_ids=[1, 2], max_new_tokens=4), timeout=60)),
        }
        for name, call in calls.items():
            for _ in range(2):  # the second time too: the failed load left nothing behind to serve from
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.DATA_LOSS, (name, err.value.details())
        for w in fleet.workers:  # a cold load straight on each worker, as a router's replication would ask
            stub = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(w.address))
            with pytest.raises(grpc.RpcError) as err:
                stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=str(bad.key)), timeout=60)
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
        with pytest.raises(ChecksumMismatch):
            fleet.client.pull("acme/p0@1", tmp_path / "pulled" / "p0")
        assert list((tmp_path / "pulled").iterdir()) == []  # nothing written, not even a temporary directory
        fleet.client.pull("acme/p1@1", tmp_path / "pulled" / "p1")
        assert (tmp_path / "pulled" / "p1" / "adapter_model.safetensors").read_bytes() == (
            models.peft[1] / "adapter_model.safetensors").read_bytes()
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join(60)
    assert errors == [] and served[0] > 0
    assert core.retries == retries  # DATA_LOSS is the request's (its adapter's) fault: not retried elsewhere
    assert Counter(core.failure_reasons) - reasons == {("request", "data_loss"): 4}
    assert all(w.healthy for w in fleet.stats().workers)
    assert all(b.state is State.CLOSED for _, b in core.membership.breakers())
    for w in fleet.workers:
        assert str(bad.key) not in [e.key for e in w.core.cache.entries()]


def test_re_pushing_a_good_copy_repairs_a_tampered_version(tampered_fleet, models, tmp_path):
    """The receiver that finds the mismatch reports it; the store re-reads the blob, quarantines it (fetches refuse
    it at once, MissingBlobs asks for it again), and the re-push the message suggests publishes good bytes."""
    fleet = tampered_fleet
    bad = fleet.pushed[0].file("adapter_model.safetensors").sha256
    assert missing(fleet.client, [bad]) == []  # before anyone noticed: the corrupt object counts as held
    with pytest.raises(ChecksumMismatch) as err:
        fleet.client.pull("acme/p0@1", tmp_path / "a")
    assert "re-push the adapter from a good copy" in err.value.message
    assert missing(fleet.client, [bad]) == [bad]  # reported and confirmed: the next push must send it
    with pytest.raises(ChecksumMismatch) as err:  # refused by the store now, before any byte is streamed
        fleet.client.pull("acme/p0@1", tmp_path / "b")
    assert "quarantined" in err.value.message and "adapterfleet push" in err.value.message
    fleet.client.push_dir(models.peft[0], "acme/p0")  # what the message says to do
    assert missing(fleet.client, [bad]) == []
    fleet.client.pull("acme/p0@1", tmp_path / "c")
    assert (tmp_path / "c" / "adapter_model.safetensors").read_bytes() == (
        models.peft[0] / "adapter_model.safetensors").read_bytes()
    reply = fleet.api.Score(worker_pb2.ScoreRequest(adapter="acme/p0@1", token_ids=[1, 2, 3]), timeout=60)
    assert reply.adapter_key == str(fleet.pushed[0].key)


def test_a_report_is_checked_not_trusted(store, models):
    """A report about a good blob (a hostile or confused client) quarantines nothing; a report about a blob that
    really is bad quarantines it, and a bad digest in a report is refused like anywhere else."""
    client = store.client()
    manifest = client.push_dir(models.peft[0], "acme/r").manifest
    good = manifest.file("adapter_model.safetensors").sha256
    assert client.report_corrupt([good]) == []
    assert missing(client, [good]) == []
    made_up = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)]  # no version refers to them
    assert client.report_corrupt(made_up) == []  # nothing quarantined (it answers the reported ones it holds)
    with pytest.raises(InvalidArgument):
        client._call("ReportCorrupt", store_pb2.ReportCorruptRequest(sha256=["not-a-digest"]))
