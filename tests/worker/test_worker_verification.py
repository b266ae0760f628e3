"""Fail closed: nothing is installed unless its bytes hash to the manifest and it fits the loaded base."""

from __future__ import annotations

import warnings

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from adapterfleet.store.manifest import BaseModelIdentity
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import ALL_LINEAR_TARGETS, make_base_model, make_peft_adapter
from tests.helpers.servers import start_worker
from tests.worker.test_worker_service import peft_logprobs


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llama = make_base_model("llama", root / "llama", seed=0)
        wide = make_base_model("llama", root / "wide", seed=0, hidden_size=48, num_attention_heads=4)
        gpt2 = make_base_model("gpt2", root / "gpt2", seed=0)
        return {
            "llama": llama,
            "good": make_peft_adapter(llama, root / "good", seed=1, r=4, target_modules=["q_proj", "v_proj"]),
            "other_hidden": make_peft_adapter(wide, root / "other", seed=1, r=4, target_modules=["q_proj"]),
            "gpt2_adapter": make_peft_adapter(gpt2, root / "g", seed=1, r=4, target_modules=["c_attn"]),
        }


@pytest.fixture
def worker(store, models, tmp_path):
    cfg = WorkerConfig(base_model=str(models["llama"]), store=store.address, max_slots=2,
                       disk_dir=str(tmp_path / "cache"))
    address, core, stop = start_worker(cfg)
    channel = grpc.insecure_channel(address)
    yield worker_pb2_grpc.WorkerStub(channel), core
    channel.close()
    stop()


def refused(stub, ref) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=[1, 2, 3]))
    return err.value


def assert_nothing_installed(core):
    assert core.cache._b._lora.nbytes() == 0
    assert all(e.slot is None for e in core.cache.entries())


def test_tampered_blob_is_data_loss(store, worker, models, s3_client):
    stub, core = worker
    m = store.client().push_dir(models["good"], "acme/good").manifest
    entry = m.file("adapter_model.safetensors")
    key = f"sha256/{entry.sha256}"
    body = bytearray(s3_client.get_object(Bucket=store.config.s3.bucket, Key=key)["Body"].read())
    body[-3] ^= 0x40
    s3_client.put_object(Bucket=store.config.s3.bucket, Key=key, Body=bytes(body))
    err = refused(stub, str(m.key))
    assert err.code() == grpc.StatusCode.DATA_LOSS and "adapter_model.safetensors" in err.details()
    assert_nothing_installed(core)


def test_adapter_for_another_hidden_size_names_module_and_shapes(store, worker, models):
    stub, core = worker
    m = store.client().push_dir(models["other_hidden"], "acme/other").manifest
    err = refused(stub, str(m.key))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "q_proj" in err.details() and "48" in err.details() and "32" in err.details()
    assert_nothing_installed(core)


def test_adapter_for_missing_modules_is_refused(store, worker, models):
    stub, core = worker
    m = store.client().push_dir(models["gpt2_adapter"], "acme/gpt2").manifest
    err = refused(stub, str(m.key))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "c_attn" in err.details()
    assert_nothing_installed(core)


def test_non_finite_weights_are_refused(store, worker, models, tmp_path):
    stub, core = worker
    bad = tmp_path / "nan"
    bad.mkdir()
    (bad / "adapter_config.json").write_bytes((models["good"] / "adapter_config.json").read_bytes())
    tensors = load_file(str(models["good"] / "adapter_model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].copy()
    tensors[name].flat[0] = np.nan
    save_file(tensors, str(bad / "adapter_model.safetensors"))
    m = store.client().push_dir(bad, "acme/nan").manifest  # the store takes it: finiteness is the worker's check
    err = refused(stub, str(m.key))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "non-finite" in err.details() and name in err.details()
    assert_nothing_installed(core)


def test_recorded_base_fingerprint_must_match(store, worker, models):
    stub, core = worker
    m = store.client().push_dir(models["good"], "acme/fp", base_model=BaseModelIdentity(
        "someone/else", "sha256:" + "0" * 64)).manifest
    err = refused(stub, str(m.key))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and core.host.fingerprint in err.details()
    ok = store.client().push_dir(models["good"], "acme/fp2", base_model=BaseModelIdentity(
        "tiny-llama", core.host.fingerprint)).manifest
    stub.Score(worker_pb2.ScoreRequest(adapter=str(ok.key), token_ids=[1, 2, 3]))


@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "opt"])
def test_score_matches_peft_on_other_architectures(arch, store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model(arch, tmp_path / "base", seed=0)
        adapter = make_peft_adapter(base, tmp_path / "a", seed=4, r=4, target_modules=ALL_LINEAR_TARGETS[arch])
    key = str(store.client().push_dir(adapter, f"acme/{arch}").manifest.key)
    cfg = WorkerConfig(base_model=str(base), store=store.address, max_slots=2, disk_dir=str(tmp_path / "cache"))
    address, _, stop = start_worker(cfg)
    try:
        stub = worker_pb2_grpc.WorkerStub(grpc.insecure_channel(address))
        ids = [1, 7, 3, 9, 22, 5]
        for ref, adir in ((key, adapter), ("", None)):
            got = np.array(stub.Score(worker_pb2.ScoreRequest(adapter=ref, token_ids=ids)).logprobs)
            assert np.max(np.abs(got - peft_logprobs(base, adir, ids))) <= 1e-4
    finally:
        stop()
