"""A secondary region's store follows its primary: versions, aliases (weights too) and yanks replicate with the same
numbers and digests; blobs are copied verified; writes sent to the secondary land on the primary; the secondary
keeps serving reads while the primary is down, catches up without gap or duplicate, and resynchronises after the
primary's stream was trimmed past its cursor."""

from __future__ import annotations

import hashlib

import pytest
import redis

from adapterfleet.common.errors import ChecksumMismatch, NotFound, Unavailable
from tests.helpers.signing_keys import ec_keypair
from tests.helpers.synthetic import write_adapter
from tests.regions.conftest import wait_until


def keys_in(s3_client, bucket: str) -> set[str]:
    return {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}


def local_events(cfg) -> list[tuple[str, str, str, str]]:
    """(type, name, version, alias) of every event in a store's own stream, in order."""
    r = redis.Redis.from_url(cfg.redis_url)
    out = [(f[b"type"].decode(), f[b"name"].decode(), f[b"version"].decode(), f[b"alias"].decode())
           for _, f in r.xrange(f"{cfg.redis_prefix}events")]
    r.close()
    return out


def test_a_push_to_the_primary_resolves_and_pulls_byte_identical_from_the_secondary(regions, tmp_path, s3_client):
    src = write_adapter(tmp_path / "src", seed=1)
    pushed = regions.ca.push_dir(src, "acme/sum", alias="prod").manifest
    got = wait_until(lambda: regions.cb.resolve("acme/sum@prod"), what="the version in region b")
    assert (got.manifest.version, got.manifest.digest) == (pushed.version, pushed.digest)
    assert got.manifest.to_json() == pushed.to_json()  # the manifest as stored, time and parent included
    bucket_b = regions.b.cfg.s3.bucket
    assert not keys_in(s3_client, bucket_b)  # lazy: nothing copied before the first fetch
    assert regions.cb.status().blobs_pending == 3

    manifest = regions.cb.pull("acme/sum@1", tmp_path / "pulled")
    assert manifest.digest == pushed.digest
    for f in src.iterdir():
        assert (tmp_path / "pulled" / f.name).read_bytes() == f.read_bytes()
    assert keys_in(s3_client, bucket_b) == {f"sha256/{f.sha256}" for f in pushed.files}
    for f in pushed.files:  # the copies are the bytes the manifest names
        body = s3_client.get_object(Bucket=bucket_b, Key=f"sha256/{f.sha256}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == f.sha256
    status = regions.cb.status()
    assert (status.role, status.primary, status.blobs_pending) == ("secondary", regions.a.address, 0)
    assert regions.b.core.copier.copied == 3


def test_alias_moves_canaries_and_yanks_replicate(regions, tmp_path):
    for i in (1, 2, 3):
        regions.ca.push_dir(write_adapter(tmp_path / f"v{i}", seed=i), "acme/m")
    regions.ca.set_alias("acme/m", "prod", ((1, 100),))
    wait_until(lambda: regions.cb.resolve("acme/m@prod").manifest.version == 1, what="prod -> 1")
    regions.ca.set_alias("acme/m", "prod", ((2, 90), (3, 10)), expect=((1, 100),))
    got = wait_until(lambda: (r := regions.cb.resolve("acme/m@prod")).alias_targets == ((2, 90), (3, 10)) and r,
                     what="the weighted canary in region b")
    primary = regions.ca.resolve("acme/m@prod")
    assert [(t.version, t.weight, t.key) for t in got.targets] == [(t.version, t.weight, t.key)
                                                                   for t in primary.targets]
    regions.ca.yank("acme/m", 1)
    wait_until(lambda: 1 in {m.version for m in regions.cb.list_versions("acme/m")[0] if m.yanked},
               what="the yank in region b")
    with pytest.raises(NotFound, match="yanked"):
        regions.cb.resolve("acme/m@1")
    regions.ca.delete_alias("acme/m", "prod")
    wait_until(lambda: "prod" not in regions.cb.list_versions("acme/m")[1], what="the alias deletion")
    versions_b, _ = regions.cb.list_versions("acme/m")
    versions_a, _ = regions.ca.list_versions("acme/m")
    assert [(m.version, m.digest, m.yanked) for m in versions_b] == [(m.version, m.digest, m.yanked)
                                                                     for m in versions_a]


def test_writes_sent_to_the_secondary_land_on_the_primary(regions, tmp_path):
    regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/w")
    out = regions.cb.push_dir(write_adapter(tmp_path / "v2", seed=2), "acme/w", alias="beta")
    assert (out.manifest.version, out.created) == (2, True)
    on_a = regions.ca.resolve("acme/w@2").manifest
    assert on_a.digest == out.manifest.digest
    assert regions.cb.resolve("acme/w@beta").manifest.digest == out.manifest.digest  # read-your-writes here
    regions.cb.set_alias("acme/w", "prod", ((1, 50), (2, 50)))
    assert regions.ca.resolve("acme/w@prod").alias_targets == ((1, 50), (2, 50))
    assert regions.cb.resolve("acme/w@prod").alias_targets == ((1, 50), (2, 50))
    assert regions.cb.yank("acme/w", 1, force=True).version == 1
    assert regions.ca.list_versions("acme/w")[0][0].yanked
    with pytest.raises(NotFound):  # the primary's own answer comes back as it is
        regions.cb.yank("acme/w", 9)
    assert regions.cb.collect_garbage(dry_run=True).deleted == []


def test_a_signed_push_sent_to_the_secondary_keeps_its_signature(regions, tmp_path):
    private, _ = ec_keypair(tmp_path, "team")
    out = regions.cb.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/signed", sign_key=private)
    assert out.manifest.signature
    assert regions.ca.resolve("acme/signed@1").manifest.signature == out.manifest.signature


def test_primary_down_reads_keep_working_writes_unavailable_then_catch_up(regions, tmp_path):
    src = write_adapter(tmp_path / "v1", seed=1)
    regions.ca.push_dir(src, "acme/d", alias="prod")
    wait_until(lambda: regions.cb.resolve("acme/d@prod"), what="replication")
    regions.cb.fetch("acme/d@prod")  # copied into region b while the primary is up
    regions.a.stop()

    assert regions.cb.resolve("acme/d@prod").manifest.version == 1
    _, files = regions.cb.fetch("acme/d@1")
    assert files["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()
    with pytest.raises(Unavailable, match=regions.a.address):
        regions.cb.push_dir(write_adapter(tmp_path / "v2", seed=2), "acme/d")
    with pytest.raises(Unavailable, match="primary store at " + regions.a.address):
        regions.cb.set_alias("acme/d", "prod", ((1, 100),))
    wait_until(lambda: not regions.cb.status().connected, what="the status to say disconnected")

    regions.a.start()
    for i in (2, 3, 4):
        regions.ca.push_dir(write_adapter(tmp_path / f"n{i}", seed=i), "acme/d")
    regions.ca.set_alias("acme/d", "prod", ((4, 100),))
    wait_until(lambda: regions.cb.resolve("acme/d@prod").manifest.version == 4, timeout=5.0, what="catch-up")
    assert [m.version for m in regions.cb.list_versions("acme/d")[0]] == [1, 2, 3, 4]
    events = local_events(regions.b.cfg)
    assert events == [("VERSION_PUSHED", "acme/d", "1", ""), ("ALIAS_CHANGED", "acme/d", "1", "prod"),
                      ("VERSION_PUSHED", "acme/d", "2", ""), ("VERSION_PUSHED", "acme/d", "3", ""),
                      ("VERSION_PUSHED", "acme/d", "4", ""), ("ALIAS_CHANGED", "acme/d", "", "prod")]
    wait_until(lambda: regions.cb.status().connected, what="connected again")


def test_a_restarted_secondary_resumes_from_its_cursor_without_gap_or_duplicate(regions, tmp_path):
    regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/r")
    wait_until(lambda: regions.cb.resolve("acme/r@1"), what="replication")
    regions.b.stop()
    regions.ca.push_dir(write_adapter(tmp_path / "v2", seed=2), "acme/r")
    regions.ca.set_alias("acme/r", "prod", ((1, 70), (2, 30)))
    regions.ca.yank("acme/r", 1, force=True)
    regions.b.start()
    wait_until(lambda: 1 in {m.version for m in regions.cb.list_versions("acme/r")[0] if m.yanked},
               what="the yank after the restart")
    assert regions.cb.resolve("acme/r@prod").alias_targets == ((1, 70), (2, 30))
    assert local_events(regions.b.cfg) == [
        ("VERSION_PUSHED", "acme/r", "1", ""), ("VERSION_PUSHED", "acme/r", "2", ""),
        ("ALIAS_CHANGED", "acme/r", "", "prod"), ("VERSION_YANKED", "acme/r", "1", "")]
    status = regions.cb.status()
    assert status.resyncs == 0
    assert status.cursor == local_events_cursor(regions.a.cfg)
    wait_until(lambda: regions.cb.status().lag_events == 0, what="lag 0")


def local_events_cursor(cfg) -> str:
    r = redis.Redis.from_url(cfg.redis_url)
    last = r.xrevrange(f"{cfg.redis_prefix}events", count=1)[0][0].decode()
    r.close()
    return last


def test_a_stream_trimmed_past_the_cursor_means_a_complete_resync(regions, tmp_path):
    regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/t", alias="prod")
    wait_until(lambda: regions.cb.resolve("acme/t@prod"), what="replication")
    regions.b.stop()
    regions.ca.push_dir(write_adapter(tmp_path / "v2", seed=2), "acme/t", alias="prod")
    regions.ca.push_dir(write_adapter(tmp_path / "x1", seed=3), "other/x", alias="live")
    regions.ca.set_alias("acme/t", "old", ((1, 100),))
    r = redis.Redis.from_url(regions.a.cfg.redis_url)
    r.xtrim(f"{regions.a.cfg.redis_prefix}events", maxlen=1, approximate=False)  # the events after b's cursor too
    r.close()
    regions.b.start()
    wait_until(lambda: regions.cb.resolve("other/x@live"), timeout=5.0, what="the resync")
    assert regions.cb.resolve("acme/t@prod").manifest.version == 2
    assert regions.cb.resolve("acme/t@old").manifest.version == 1
    status = regions.cb.status()
    assert status.resyncs == 1 and "trimmed" in status.last_resync
    regions.ca.set_alias("acme/t", "prod", ((1, 100),))  # and it follows the stream again afterwards
    wait_until(lambda: regions.cb.resolve("acme/t@prod").manifest.version == 1, what="following after the resync")


def test_a_blob_altered_in_the_primarys_bucket_is_never_copied(regions, tmp_path, s3_client):
    pushed = regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/bad").manifest
    weights = pushed.file("adapter_model.safetensors")
    wait_until(lambda: regions.cb.resolve("acme/bad@1"), what="replication")
    body = s3_client.get_object(Bucket=regions.a.cfg.s3.bucket, Key=f"sha256/{weights.sha256}")["Body"].read()
    tampered = body[:-4] + b"\x00\x00\x00\x01"
    s3_client.put_object(Bucket=regions.a.cfg.s3.bucket, Key=f"sha256/{weights.sha256}", Body=tampered)
    with pytest.raises(ChecksumMismatch, match="primary"):
        regions.cb.fetch("acme/bad@1")
    assert f"sha256/{weights.sha256}" not in keys_in(s3_client, regions.b.cfg.s3.bucket)
    assert regions.b.core.copier.refused >= 1
    assert regions.cb.status().blobs_pending >= 1


def test_eager_replication_copies_blobs_without_a_fetch(eager_regions, tmp_path, s3_client):
    pushed = eager_regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/e").manifest
    wanted = {f"sha256/{f.sha256}" for f in pushed.files}
    wait_until(lambda: wanted <= keys_in(s3_client, eager_regions.b.cfg.s3.bucket), timeout=5.0,
               what="the eager copy")
    wait_until(lambda: eager_regions.cb.status().blobs_pending == 0, what="nothing pending")
    assert eager_regions.cb.status().replicate == "eager"


def test_store_status_command_reports_role_primary_cursor_lag_and_pending(regions, tmp_path, capsys):
    import json

    from adapterfleet.cli.main import main

    regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/s")
    wait_until(lambda: regions.cb.status().cursor == local_events_cursor(regions.a.cfg), what="replication")
    # the lag is the one at the last check (every lag_check_s): it may still count the events just applied
    wait_until(lambda: regions.cb.status().lag_events == 0, what="a lag check after replication")
    assert main(["store", "status", "--json", "--store", regions.b.address]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["role"], out["region"], out["primary"], out["replicate"]) == ("secondary", "b", regions.a.address,
                                                                              "lazy")
    assert out["cursor"] == local_events_cursor(regions.a.cfg)
    assert out["blobs_pending"] == 3 and out["lag_events"] == 0 and out["connected"]
    assert main(["store", "status", "--store", regions.a.address]) == 0
    text = capsys.readouterr().out
    assert "role:           primary (region a)" in text


def test_store_serve_flags_make_a_secondary(tmp_path):
    from adapterfleet.cli.main import build_parser
    from adapterfleet.cli.store_serve import config_from_args
    from adapterfleet.common.errors import InvalidArgument

    args = build_parser().parse_args(["store", "serve", "--insecure", "--region", "eu", "--primary", "10.0.0.1:50051",
                                      "--replicate", "eager"])
    cfg = config_from_args(args)
    assert (cfg.region, cfg.replica.primary, cfg.replica.replicate) == ("eu", "10.0.0.1:50051", "eager")
    assert config_from_args(build_parser().parse_args(["store", "serve", "--insecure"])).replica is None
    with pytest.raises(InvalidArgument, match="--primary"):
        config_from_args(build_parser().parse_args(["store", "serve", "--insecure", "--replicate", "eager"]))


def test_a_miss_the_primary_can_answer_waits_for_replication(regions, tmp_path):
    follower = regions.b.core.follower
    apply = follower.apply

    async def slow_apply(event):  # replication 0.5 s behind: a resolve right after the push misses locally
        import asyncio

        await asyncio.sleep(0.5)
        return await apply(event)

    follower.apply = slow_apply
    pushed = regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/late").manifest
    got = regions.cb.resolve("acme/late@1")  # not NotFound: the primary has it, so the secondary waits for it
    assert got.manifest.digest == pushed.digest
    with pytest.raises(NotFound):  # a miss the primary cannot answer either is still NotFound, at once
        regions.cb.resolve("acme/never@1")


def test_a_copy_corrupted_in_the_secondarys_bucket_is_copied_again(regions, tmp_path, s3_client):
    src = write_adapter(tmp_path / "v1", seed=1)
    pushed = regions.ca.push_dir(src, "acme/heal").manifest
    wait_until(lambda: regions.cb.resolve("acme/heal@1"), what="replication")
    regions.cb.fetch("acme/heal@1")  # copied into region b
    weights = pushed.file("adapter_model.safetensors")
    key = f"sha256/{weights.sha256}"
    body = s3_client.get_object(Bucket=regions.b.cfg.s3.bucket, Key=key)["Body"].read()
    s3_client.put_object(Bucket=regions.b.cfg.s3.bucket, Key=key, Body=body[:-1] + b"\x07")
    fresh = regions.b.client(timeout=10)  # cb keeps the small files it verified (the weights here): a new reader
    try:
        with pytest.raises(ChecksumMismatch):  # the client finds it, and reports it: region b quarantines its copy
            fresh.fetch("acme/heal@1")
        _, files = fresh.fetch("acme/heal@1")  # ... and the next fetch copies it again from the primary
    finally:
        fresh.close()
    assert files["adapter_model.safetensors"] == (src / "adapter_model.safetensors").read_bytes()
    assert s3_client.get_object(Bucket=regions.b.cfg.s3.bucket, Key=key)["Body"].read() == body


def test_prometheus_gauges_for_replication_lag(regions, tmp_path):
    from types import SimpleNamespace

    from adapterfleet.store.metrics import ReplicationCollector

    regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/metrics")
    wait_until(lambda: regions.cb.status().cursor == local_events_cursor(regions.a.cfg), what="replication")
    follower = regions.b.core.follower
    wait_until(lambda: follower.state.checked_at and follower.state.lag_events == 0, what="a lag check")

    def samples() -> dict[str, float]:
        return {s.name + str(sorted(s.labels.items())): s.value
                for fam in ReplicationCollector(SimpleNamespace(follower=follower)).collect() for s in fam.samples}

    got = samples()
    assert got["adapterfleet_store_replication_lag_events[]"] == 0
    assert got["adapterfleet_store_replication_lag_seconds[]"] == 0
    assert got["adapterfleet_store_replication_connected[]"] == 1
    assert got["adapterfleet_store_replication_events_total[]"] >= 1
    regions.a.stop()  # unreachable: lag in seconds grows from the last time it knew it had everything
    wait_until(lambda: samples()["adapterfleet_store_replication_lag_seconds[]"] > 0, timeout=5.0,
               what="lag seconds while the primary is down")
    assert samples()["adapterfleet_store_replication_connected[]"] == 0
    assert list(ReplicationCollector(SimpleNamespace(follower=None)).collect()) == []  # a primary has none
    regions.a.start()


def test_lazy_pending_counts_only_blobs_this_region_lacks(regions, tmp_path):
    regions.ca.push_dir(write_adapter(tmp_path / "v1", seed=1), "acme/p")
    wait_until(lambda: regions.cb.resolve("acme/p@1"), what="replication")
    regions.cb.fetch("acme/p@1")  # its three blobs copied
    assert regions.cb.status().blobs_pending == 0
    regions.ca.push_dir(write_adapter(tmp_path / "v2", seed=2), "acme/p")  # the same config and README
    wait_until(lambda: regions.cb.status().blobs_pending == 1, what="only v2's new weights pending")
