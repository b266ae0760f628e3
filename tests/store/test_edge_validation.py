"""Hostile inputs through a real store over gRPC: each is INVALID_ARGUMENT with a short message that names the
field and the rule (never INTERNAL, never the whole bad value echoed back), and the store keeps serving."""

from __future__ import annotations

import hashlib
import json
import struct

import grpc
import pytest

from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc
from tests.helpers.synthetic import lora_config, write_adapter

MAX_MESSAGE = 600  # a refusal says what and why in a few lines; a 10,000-character value must not come back
LONG = "a" * 10_000


@pytest.fixture
def stub(store):
    channel = grpc.insecure_channel(store.address)
    yield store_pb2_grpc.AdapterStoreStub(channel)
    channel.close()


@pytest.fixture
def good(store, tmp_path) -> dict[str, bytes]:
    """The files of a valid adapter, already stored as t/good@1."""
    src = write_adapter(tmp_path / "good", readme=None)
    store.client().push_dir(src, "t/good")
    return {p.name: p.read_bytes() for p in src.iterdir()}


def push_raw(stub, name: str, files: dict[str, bytes], alias: str = "") -> store_pb2.PushResponse:
    order = {"adapter_config.json": 0, "adapter_model.safetensors": 1}
    names = sorted(files, key=lambda n: (order.get(n, 2), n))
    entries = [common_pb2.FileEntry(name=n, size=len(files[n]), sha256=hashlib.sha256(files[n]).hexdigest())
               for n in names]

    def requests():
        yield store_pb2.PushRequest(header=store_pb2.PushHeader(name=name, alias=alias, files=entries))
        for n in names:
            yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file=n, offset=0, data=files[n]))

    return stub.Push(requests(), timeout=30)


def refused(call, *needles: str) -> str:
    """Run ``call``; it must fail with INVALID_ARGUMENT and a short message containing every needle."""
    with pytest.raises(grpc.RpcError) as err:
        call()
    code, details = err.value.code(), err.value.details()
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert len(details) <= MAX_MESSAGE, (len(details), details[:200])
    assert LONG[:200] not in details
    for needle in needles:
        assert needle in details, (needle, details)
    return details


def still_serving(stub, store, tmp_path) -> None:
    out = store.client().push_dir(write_adapter(tmp_path / "after", seed=7), "t/after")
    assert out.manifest.version == 1
    assert stub.Resolve(store_pb2.ResolveRequest(ref="t/after@1"), timeout=10).manifest.version == 1


def safetensors_file(header: dict | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def deep(n: int) -> str:
    return "[" * n + "]" * n


# ---- adapter content: JSON depth, wrong-typed safetensors fields ------------------------------------------------

W = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}

CONTENT_CASES = {
    "config nested 1000 deep": (
        {"adapter_config.json": ('{"peft_type": "LORA", "x": ' + deep(1000) + "}").encode()},
        ["adapter_config.json", "nested more than 64 levels"],
    ),
    "config integer of 5000 digits": (
        {"adapter_config.json": b'{"peft_type": "LORA", "r": ' + b"9" * 5000 + b"}"},
        ["adapter_config.json", "5000 digits"],
    ),
    "config with a lone surrogate": (
        {"adapter_config.json": json.dumps({**lora_config(), "task_type": "\ud800"}).encode()},
        ["adapter_config.json", "surrogate"],
    ),
    "safetensors header nested 1000 deep": (
        {"adapter_model.safetensors": safetensors_file(('{"w": ' + deep(1000) + "}").encode(), b"\0" * 4)},
        ["adapter_model.safetensors", "nested more than 64 levels"],
    ),
    "dtype given as a list": (
        {"adapter_model.safetensors": safetensors_file({"w": {**W, "dtype": ["F32"]}}, b"\0" * 4)},
        ["tensor 'w'", "dtype must be a string"],
    ),
    "dtype given as an object": (
        {"adapter_model.safetensors": safetensors_file({"w": {**W, "dtype": {"F32": 1}}}, b"\0" * 4)},
        ["tensor 'w'", "dtype must be a string"],
    ),
    "shape given as a string": (
        {"adapter_model.safetensors": safetensors_file({"w": {**W, "shape": "1"}}, b"\0" * 4)},
        ["tensor 'w'", "shape must be a list of non-negative integers"],
    ),
    "shape of nested lists": (
        {"adapter_model.safetensors": safetensors_file({"w": {**W, "shape": [[1]]}}, b"\0" * 4)},
        ["tensor 'w'", "shape must be a list of non-negative integers"],
    ),
    "shape that overflows u64": (
        {"adapter_model.safetensors": safetensors_file({"w": {**W, "shape": [2**40, 2**40]}}, b"\0" * 4)},
        ["tensor 'w'", "more than 2**64"],
    ),
    "data_offsets given as an object": (
        {"adapter_model.safetensors": safetensors_file({"w": {**W, "data_offsets": {"0": 4}}}, b"\0" * 4)},
        ["tensor 'w'", "data_offsets must be [start, end]"],
    ),
    "__metadata__ with a list value": (
        {"adapter_model.safetensors": safetensors_file({"__metadata__": {"format": ["pt"]}, "w": W}, b"\0" * 4)},
        ["__metadata__ must be an object of string keys to string values"],
    ),
    "tensor name of 10,000 characters": (
        {"adapter_model.safetensors": safetensors_file({LONG: {**W, "dtype": 1}}, b"\0" * 4)},
        ["dtype must be a string", "(10002 characters)"],
    ),
}


@pytest.mark.parametrize("case", sorted(CONTENT_CASES))
def test_malformed_adapter_content_is_invalid_argument(case, store, stub, good, tmp_path):
    replace, needles = CONTENT_CASES[case]
    refused(lambda: push_raw(stub, "t/bad", {**good, **replace}), *needles)
    with pytest.raises(grpc.RpcError) as err:
        stub.Resolve(store_pb2.ResolveRequest(ref="t/bad"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND  # nothing half-pushed became visible
    still_serving(stub, store, tmp_path)


# ---- names, refs, aliases ------------------------------------------------------------------------------------------

BAD_NAMES = {
    "trailing newline": ("t/good\n", ["adapter name", "'t/good\\n'"]),
    "trailing carriage return": ("t/good\r", ["adapter name"]),
    "leading tab": ("\tt/good", ["adapter name"]),
    "fullwidth letters": ("ｔ/good", ["adapter name", "ASCII"]),
    "10,000 characters": (LONG, ["adapter name", "longer than 129 characters", "(10000 characters)"]),
    "empty": ("", ["adapter name"]),
}


@pytest.mark.parametrize("case", sorted(BAD_NAMES))
def test_bad_names_are_refused_on_push(case, store, stub, good, tmp_path):
    name, needles = BAD_NAMES[case]
    refused(lambda: push_raw(stub, name, good), *needles)
    names = [a.name for a in stub.ListAdapters(store_pb2.ListAdaptersRequest(), timeout=10).adapters]
    assert names == ["t/good"]  # no second adapter that prints like the first
    still_serving(stub, store, tmp_path)


BAD_REFS = {
    "superscript two": ("t/good@²", ["version in ref", "'²'", "ASCII digits"]),
    "arabic-indic one": ("t/good@١", ["version in ref", "ASCII digits"]),
    "version zero": ("t/good@0", ["version in ref", "from 1 to"]),
    "version past uint32": ("t/good@4294967296", ["version in ref", "4294967295"]),
    "version of 5000 digits": ("t/good@" + "1" * 5000, ["ref", "longer than"]),
    "name with trailing newline": ("t/good\n", ["adapter name"]),
    "alias with trailing newline": ("t/good@prod\n", ["alias in ref"]),
    "uppercase digest": ("t/good@sha256:" + "A" * 64, ["digest in ref", "lowercase hex"]),
    "short digest": ("t/good@sha256:abc", ["digest in ref"]),
    "10,000 characters": (LONG, ["ref", "(10000 characters)"]),
    "10,000-character alias": ("t/good@" + LONG, ["ref", "(10007 characters)"]),
}


@pytest.mark.parametrize("case", sorted(BAD_REFS))
def test_bad_refs_are_refused_on_resolve_and_fetch(case, store, stub, good, tmp_path):
    ref, needles = BAD_REFS[case]
    refused(lambda: stub.Resolve(store_pb2.ResolveRequest(ref=ref), timeout=10), *needles)
    refused(lambda: list(stub.Fetch(store_pb2.FetchRequest(ref=ref), timeout=10)), *needles)
    still_serving(stub, store, tmp_path)


def test_bad_names_and_aliases_are_refused_everywhere_else(store, stub, good, tmp_path):
    target = [common_pb2.AliasTarget(version=1, weight=100)]
    refused(lambda: stub.ListVersions(store_pb2.ListVersionsRequest(name=LONG), timeout=10), "adapter name")
    refused(lambda: stub.ListVersions(store_pb2.ListVersionsRequest(name="t/good\n"), timeout=10), "adapter name")
    refused(lambda: stub.SetAlias(store_pb2.SetAliasRequest(name="t/good", alias="prod\n", targets=target),
                                  timeout=10), "alias", "'prod\\n'")
    refused(lambda: stub.SetAlias(store_pb2.SetAliasRequest(name="t/good", alias=LONG, targets=target),
                                  timeout=10), "alias", "longer than 64 characters")
    refused(lambda: stub.DeleteAlias(store_pb2.DeleteAliasRequest(name="t/good", alias="²"), timeout=10), "alias")
    refused(lambda: stub.YankVersion(store_pb2.YankVersionRequest(name=LONG, version=1), timeout=10),
            "adapter name")
    refused(lambda: push_raw(stub, "t/good", good, alias="prod\n"), "alias")
    refused(lambda: stub.MissingBlobs(store_pb2.MissingBlobsRequest(sha256=[LONG]), timeout=10), "sha256")
    # the good adapter is untouched and an ordinary alias still works
    stub.SetAlias(store_pb2.SetAliasRequest(name="t/good", alias="prod", targets=target), timeout=10)
    assert stub.Resolve(store_pb2.ResolveRequest(ref="t/good@prod"), timeout=10).manifest.version == 1
    still_serving(stub, store, tmp_path)
