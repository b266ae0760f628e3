"""A rogue store (a real gRPC server on port 0 that answers Resolve and Fetch) serving file names such as
``../../X``, ``/abs/X`` or ``a/b``: the client's pull, the SDK's cache and a worker refuse with a typed error
(UnsafeFileName, INVALID_ARGUMENT) and write nothing, least of all outside their destination."""

from __future__ import annotations

import hashlib
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from adapterfleet.common.errors import UnsafeFileName
from adapterfleet.common.grpc_errors import ERROR_TYPE_KEY
from adapterfleet.sdk.store import AdapterStore
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.client import StoreClient
from adapterfleet.store.manifest import FileEntry, Manifest
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc

CONFIG = b'{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}'


def _entry(name: str, data: bytes) -> common_pb2.FileEntry:
    return common_pb2.FileEntry(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())


class RogueStore(store_pb2_grpc.AdapterStoreServicer):
    """``mode`` "manifest": its manifest lists ``bad`` as a file name; "chunk": the manifest is clean but the
    stream sends bytes under ``bad``."""

    def __init__(self, mode: str, bad: str):
        self.mode, self.bad = mode, bad
        clean = Manifest("acme/evil", (FileEntry("adapter_config.json", len(CONFIG),
                                                 hashlib.sha256(CONFIG).hexdigest()),))
        self.pb = pc.manifest_to_pb(clean)
        if mode == "manifest":
            self.pb.files.append(_entry(bad, b"owned\n"))
        self.fetches = 0

    def Resolve(self, request, context):
        return store_pb2.Resolution(manifest=self.pb, key=f"acme/evil@{self.pb.digest}")

    def Fetch(self, request, context):
        self.fetches += 1
        yield store_pb2.FetchResponse(manifest=self.pb)
        name = self.bad if self.mode == "chunk" else "adapter_config.json"
        yield store_pb2.FetchResponse(chunk=store_pb2.Chunk(file=name, offset=0, data=b"owned\n"))
        yield store_pb2.FetchResponse(chunk=store_pb2.Chunk(file=self.bad, offset=0, data=b"owned\n"))


def hostile_names(root: Path) -> list[str]:
    return ["../../X", "../X", str(root / "abs-X"), "a/b", "..", "x\\..\\X", "nul\x00X", ".hidden", "y" * 300]


@pytest.fixture
def rogue():
    servers = []

    def start(mode: str, bad: str) -> tuple[str, RogueStore]:
        impl = RogueStore(mode, bad)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        store_pb2_grpc.add_AdapterStoreServicer_to_server(impl, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", impl

    yield start
    for s in servers:
        s.stop(0)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("mode", ["manifest", "chunk"])
def test_pull_refuses_hostile_names_and_writes_nothing(rogue, tmp_path, mode):
    root = tmp_path / "root"
    dest = root / "a" / "b" / "dest"
    dest.parent.mkdir(parents=True)
    for bad in hostile_names(tmp_path):
        address, impl = rogue(mode, bad)
        with StoreClient(address) as client, pytest.raises(UnsafeFileName):
            client.pull("acme/evil@1", dest)
        assert tree(root) == {"a", "a/b"}, bad  # no DEST, no temp dir left, nothing beside or above
        assert not (tmp_path / "abs-X").exists() and not list(tmp_path.rglob("X"))
        if mode == "chunk":
            assert impl.fetches == 1  # the clean manifest passed; the stray chunk stopped it


@pytest.mark.parametrize("mode", ["manifest", "chunk"])
def test_sdk_cache_refuses_hostile_names(rogue, tmp_path, mode):
    address, _ = rogue(mode, "../../X")
    cache = tmp_path / "cache"
    with AdapterStore(address, cache_dir=cache) as store, pytest.raises(UnsafeFileName):
        store.pull("acme/evil@1")
    assert not list(tmp_path.rglob("X"))
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"]


@pytest.mark.parametrize("mode", ["manifest", "chunk"])
def test_worker_refuses_hostile_names_before_writing(rogue, tmp_path, models, mode):
    from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
    from adapterfleet.worker.config import WorkerConfig
    from tests.helpers.servers import start_worker

    address, _ = rogue(mode, "../../X")
    disk = tmp_path / "w" / "cache"
    cfg = WorkerConfig(base_model=str(models["base"]), store=address, max_slots=1, disk_dir=str(disk),
                       announce_every_s=3600)
    worker_address, core, stop = start_worker(cfg)
    try:
        with grpc.insecure_channel(worker_address) as channel:
            stub = worker_pb2_grpc.WorkerStub(channel)
            for tier in (common_pb2.TIER_ACTIVE, common_pb2.TIER_DISK):
                with pytest.raises(grpc.RpcError) as err:
                    stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref="acme/evil@1", tier=tier))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
                assert dict(err.value.trailing_metadata() or ())[ERROR_TYPE_KEY] == "UnsafeFileName"
                assert "../../X" in err.value.details()
        assert not core.cache.entries()
    finally:
        stop()
    assert not list(tmp_path.rglob("X"))
    assert not [p for p in disk.rglob("*") if p.is_file() and ".locks" not in p.parts]
