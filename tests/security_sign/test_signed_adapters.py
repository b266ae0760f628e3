"""Signed adapters (OpenSSF Model Signing, EC keys): `push --sign-key` stores the signature beside the version
(not in its digest); a worker with `--trust-key` installs a version only if its signature verifies with a key
trusted for the adapter's tenant and covers exactly the fetched files; every refusal is FAILED_PRECONDITION
(SignatureRejected) naming the reason, and nothing is installed. Real store (Redis + moto S3), real worker."""

from __future__ import annotations

import json

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from adapterfleet.cli.main import main
from adapterfleet.common.errors import FailedPrecondition, InvalidArgument
from adapterfleet.common.grpc_errors import ERROR_TYPE_KEY
from adapterfleet.common.signing import sign_dir
from adapterfleet.store.client import adapter_files
from adapterfleet.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.servers import start_worker
from tests.helpers.signing_keys import ec_keypair


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {"a": ec_keypair(d, "a"), "b": ec_keypair(d, "b", ec.SECP384R1())}


def signature_of(directory, private) -> str:
    return sign_dir(directory, [p.name for p in adapter_files(directory)], private)


def worker_for(store, models, tmp_path, trust: tuple[str, ...]):
    cfg = WorkerConfig(base_model=str(models["base"]), store=store.address, max_slots=2,
                       disk_dir=str(tmp_path / "disk"), announce_every_s=3600, trust_keys=trust)
    return start_worker(cfg)


def load(stub, ref: str) -> None:
    stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=ref))
    stub.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3]))


def refusal(stub, ref: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=ref))
    e = err.value
    assert e.code() == grpc.StatusCode.FAILED_PRECONDITION, e.details()
    assert dict(e.trailing_metadata() or ())[ERROR_TYPE_KEY] == "SignatureRejected"
    return e.details()


def tamper(redis_client, store, name: str, edit) -> None:
    """Rewrite the stored version record's signature (what a compromised store or its Redis could serve)."""
    key = f"{store.config.redis_prefix}n:{name}:m"
    ((digest, raw),) = redis_client.hgetall(key).items()
    record = json.loads(raw)
    record["signature"] = edit(record.get("signature", ""))
    redis_client.hset(key, digest, json.dumps(record))


def test_signature_is_stored_beside_the_version_not_in_its_digest(store, models, keys, tmp_path, capsys):
    code = main(["push", str(models["one"]), "--name", "acme/one", "--sign-key", str(keys["a"][0]),
                 "--store", store.address, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["signed"] is True and out["created"] is True
    client = store.client()
    unsigned = client.push_dir(models["one"], "acme/copy").manifest  # the same bytes, unsigned
    assert unsigned.digest == out["digest"] and not unsigned.signature
    resolved = client.resolve("acme/one@1").manifest
    assert resolved.signature and client.fetch("acme/one@1")[0].signature == resolved.signature
    # an identical signed re-push is the same version and keeps the first signature (ECDSA signatures differ)
    again = client.push_dir(models["one"], "acme/one", sign_key=keys["a"][0])
    assert not again.created and again.manifest.signature == resolved.signature
    # signing an already-stored unsigned version: refused, saying why, and its alias does not move
    client.push_dir(models["two"], "acme/copy", alias="prod")
    with pytest.raises(FailedPrecondition, match="already holds these exact files, unsigned"):
        client.push_dir(models["one"], "acme/copy", alias="prod", sign_key=keys["a"][0])
    assert client.resolve("acme/copy@prod").manifest.version == 2


def test_store_refuses_a_signature_over_other_files_or_malformed(store, models, keys):
    from adapterfleet.store.client import hash_file
    from adapterfleet.v1 import store_pb2

    client = store.client()
    other = signature_of(models["two"], keys["a"][0])
    paths = adapter_files(models["one"])
    entries = [hash_file(p) for p in paths]

    def push(signature: str):
        header = store_pb2.PushHeader(name="acme/one", signature=signature, files=[
            common_pb2.FileEntry(name=e.name, size=e.size, sha256=e.sha256) for e in entries])
        return client._push_once(header, paths, entries, None, 1 << 20, dedupe=True)

    for bad, words in [(other, "covers other files"), ("{not json", "not JSON"), ("x" * (70 << 10), "bytes"),
                       (json.dumps({"mediaType": "nope"}), "mediaType")]:
        with pytest.raises(InvalidArgument, match=words):
            push(bad)
    assert client.list_adapters() == []  # nothing was stored


def test_worker_with_trust_key_refuses_all_but_a_trusted_signature(store, models, keys, tmp_path, redis_client):
    client = store.client()
    signed = client.push_dir(models["one"], "acme/signed", sign_key=keys["a"][0]).manifest
    unsigned = client.push_dir(models["two"], "acme/unsigned").manifest
    other_key = client.push_dir(models["two"], "acme/resigned", sign_key=keys["b"][0]).manifest
    tampered = client.push_dir(models["one"], "acme/tampered", sign_key=keys["a"][0]).manifest
    swapped = client.push_dir(models["two"], "acme/swapped", sign_key=keys["a"][0]).manifest

    def flip_signature(text: str) -> str:  # one character of the ECDSA signature changed
        bundle = json.loads(text)
        sig = bundle["dsseEnvelope"]["signatures"][0]
        sig["sig"] = ("B" if sig["sig"][5] != "B" else "C").join([sig["sig"][:5], sig["sig"][6:]])
        return json.dumps(bundle)

    tamper(redis_client, store, "acme/tampered", flip_signature)
    # a valid signature by the trusted key, but over another adapter's files
    tamper(redis_client, store, "acme/swapped", lambda _: signed.signature)

    address, core, stop = worker_for(store, models, tmp_path, (str(keys["a"][1]),))
    try:
        with grpc.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            load(stub, str(signed.key))
            assert "is unsigned" in refusal(stub, str(unsigned.key))
            assert "does not verify with any trusted key" in refusal(stub, str(other_key.key))
            assert "does not verify with any trusted key" in refusal(stub, str(tampered.key))
            assert "covers other files" in refusal(stub, str(swapped.key))
            resident = {e.key for e in core.cache.entries() if e.slot is not None}
            assert resident == {str(signed.key)}  # none of the refused ones took a slot
        assert sorted(p.name for p in (tmp_path / "disk").iterdir() if not p.name.startswith(".")) == \
            [signed.digest.removeprefix("sha256:")]  # nor a disk copy
    finally:
        stop()


def test_trust_key_per_tenant(store, models, keys, tmp_path):
    client = store.client()
    acme = client.push_dir(models["one"], "acme/x", sign_key=keys["a"][0]).manifest
    beta = client.push_dir(models["one"], "beta/x", sign_key=keys["a"][0]).manifest
    beta_b = client.push_dir(models["two"], "beta/y", sign_key=keys["b"][0]).manifest
    address, _, stop = worker_for(store, models, tmp_path, (f"acme={keys['a'][1]}", f"beta={keys['b'][1]}"))
    try:
        with grpc.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            load(stub, str(acme.key))
            load(stub, str(beta_b.key))
            assert "does not verify with any trusted key" in refusal(stub, str(beta.key))  # acme's key, for beta
    finally:
        stop()


def test_disk_copy_is_checked_again_when_read(store, models, keys, tmp_path):
    """Workers may share a disk cache, so an entry's signature is checked when it is read back, not only when it
    was fetched: an entry whose signature was altered on disk is refused from the disk copy."""
    signed = store.client().push_dir(models["one"], "acme/disk", sign_key=keys["a"][0]).manifest
    address, core, stop = worker_for(store, models, tmp_path, (str(keys["a"][1]),))
    try:
        with grpc.insecure_channel(address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref=str(signed.key), tier=common_pb2.TIER_DISK))
            meta_path = tmp_path / "disk" / signed.digest.removeprefix("sha256:") / ".manifest.json"
            meta = json.loads(meta_path.read_text())
            record = json.loads(meta["json"])
            record["signature"] = signature_of(models["one"], keys["b"][0])  # valid, by an untrusted key
            meta["json"] = json.dumps(record)
            meta_path.write_text(json.dumps(meta))
            assert "does not verify with any trusted key" in refusal(stub, str(signed.key))
            assert (core.cache.stats.cold_loads, core.cache.stats.disk_loads) == (1, 0)  # refused from disk
    finally:
        stop()


def test_worker_refuses_an_unreadable_trust_key(store, models, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    with pytest.raises(InvalidArgument, match="trust-key"):
        worker_for(store, models, tmp_path, (str(bad),))


def test_pulled_signature_verifies_with_model_signing_itself(store, models, keys, tmp_path):
    """Interoperability: the bundle is the standard format; model-signing's own verifier accepts it over the
    pulled directory."""
    import model_signing

    m = store.client().push_dir(models["one"], "acme/interop", sign_key=keys["a"][0]).manifest
    dest = tmp_path / "pulled"
    store.client().pull("acme/interop@1", dest)
    sig = tmp_path / "sig.json"
    sig.write_text(m.signature)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["a"][1]).set_ignore_unsigned_files(
        True).verify(dest, sig)
    (dest / "adapter_config.json").write_text("{}")
    with pytest.raises(ValueError, match="Signature mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keys["a"][1]).set_ignore_unsigned_files(
            True).verify(dest, sig)


def test_sdk_from_store_with_trust_key(store, models, keys, tmp_path):
    from transformers import AutoModelForCausalLM

    from adapterfleet import SignatureRejected, from_store
    from adapterfleet.sdk.store import AdapterStore

    client = store.client()
    client.push_dir(models["one"], "acme/sdk", sign_key=keys["a"][0])
    client.push_dir(models["two"], "acme/sdk-plain")
    client.push_dir(models["two"], "acme/sdk-b", sign_key=keys["b"][0])
    with AdapterStore(store.address, cache_dir=tmp_path / "cache") as s:
        base = AutoModelForCausalLM.from_pretrained(models["base"])
        model = from_store(base, "acme/sdk@1", store=s, trust_key=keys["a"][1])
        assert model.adapterfleet_sources["default"].startswith("acme/sdk@sha256:")
        for ref, words in [("acme/sdk-plain@1", "is unsigned"), ("acme/sdk-b@1", "does not verify")]:
            with pytest.raises(SignatureRejected, match=words):
                from_store(AutoModelForCausalLM.from_pretrained(models["base"]), ref, store=s,
                           trust_key=[keys["a"][1]])
        # a cache hit is checked too: the unsigned version is in the cache now, and still refused
        with pytest.raises(SignatureRejected, match="is unsigned"):
            from_store(AutoModelForCausalLM.from_pretrained(models["base"]), "acme/sdk-plain@1", store=s,
                       trust_key=str(keys["a"][1]))
