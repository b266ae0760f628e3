"""adapterfleet.store.workers: a worker's registry record on the wire (tiers as the proto enum) and in Redis (tiers
by name, readable as stored before the enum existed)."""

from __future__ import annotations

import json

from adapterfleet.store.workers import WorkerRecord, record_from_json, record_from_pb, record_to_json, record_to_pb
from adapterfleet.v1 import common_pb2, registry_pb2

RECORD = WorkerRecord(id="w1", address="10.0.0.1:50061", region="eu", capacity=4, load=2.0,
                      adapters={"a@sha256:" + "1" * 64: "active", "b@sha256:" + "2" * 64: "host",
                                "c@sha256:" + "3" * 64: "disk", "d@sha256:" + "4" * 64: "loading"},
                      fingerprint="sha256:" + "f" * 64, base_model="/models/base", draining=True)


def test_a_record_survives_the_wire_with_tiers_as_the_enum():
    pb = record_to_pb(RECORD, ttl_seconds=3.0)
    assert pb.ttl_seconds == 3.0
    assert [a.tier for a in pb.adapters] == [common_pb2.TIER_ACTIVE, common_pb2.TIER_HOST, common_pb2.TIER_DISK,
                                             common_pb2.TIER_LOADING]
    assert record_from_pb(registry_pb2.WorkerInfo.FromString(pb.SerializeToString())) == RECORD


def test_a_record_survives_redis_json_and_reads_what_was_stored_before():
    assert record_from_json(record_to_json(RECORD)) == RECORD
    assert json.loads(record_to_json(RECORD))["adapters"]["b@sha256:" + "2" * 64] == "host"  # names, not numbers
    stored_before = ('{"adapters": {"k@sha256:' + "5" * 64 + '": "active"}, "address": "h:1", "base_model": "", '
                     '"capacity": 2, "draining": false, "fingerprint": "", "id": "w0", "load": 0.0, '
                     '"region": "local"}').encode()
    assert record_from_json(stored_before) == WorkerRecord("w0", "h:1", capacity=2,
                                                           adapters={"k@sha256:" + "5" * 64: "active"})
