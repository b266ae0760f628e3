"""A blocking client of the store: push a directory, pull or fetch a version (verified), and the rest.

Every byte a client receives is checked against the manifest's sha256 before it is handed over; a mismatch is
ChecksumMismatch (DATA_LOSS). Broken fetch streams resume from (file, offset) on the same digest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from adapterfleet.common.channel import CHANNEL_OPTIONS
from adapterfleet.common.errors import AdapterFleetError, BlobMissing, ChecksumMismatch, InvalidArgument
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.listing import AdapterSummary, GcReport
from adapterfleet.store.manifest import BaseModelIdentity, FileEntry, Manifest
from adapterfleet.store.resolved import Resolved
from adapterfleet.store.targets import Targets
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc

log = logging.getLogger("adapterfleet.store.client")

CHUNK = 1 << 20
ORDER = {"adapter_config.json": 0, "adapter_model.safetensors": 1}  # config first: validated before weights
Progress = Callable[[int], None]  # called with the number of bytes just moved


@dataclass(frozen=True)
class PushOutcome:
    manifest: Manifest
    created: bool
    bytes_sent: int
    bytes_deduplicated: int


def hash_file(path: Path) -> FileEntry:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            size += len(block)
    return FileEntry(path.name, size, h.hexdigest())


def adapter_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise InvalidArgument(f"{directory} is not a directory; push takes a PEFT adapter directory")
    files = [p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")]
    return sorted(files, key=lambda p: (ORDER.get(p.name, 2), p.name))


class StoreClient:
    def __init__(self, address: str, *, timeout: float | None = None, channel: grpc.Channel | None = None):
        self.address = address
        self._channel = channel or grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = store_pb2_grpc.AdapterStoreStub(self._channel)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, request):
        try:
            return getattr(self._stub, method)(request, timeout=self._timeout)
        except grpc.RpcError as err:
            raise error_from_rpc(err) from None

    # --- push -----------------------------------------------------------------------------------------------------
    def push_dir(self, directory: str | os.PathLike, name: str, *, alias: str = "", parent: str = "",
                 base_model: BaseModelIdentity | None = None, progress: Progress | None = None,
                 chunk_size: int = CHUNK) -> PushOutcome:
        paths = adapter_files(Path(directory))
        entries = [hash_file(p) for p in paths]
        header = store_pb2.PushHeader(name=name, alias=alias, parent=parent,
                                      base_model=pc.base_to_pb(base_model or BaseModelIdentity()),
                                      files=[common_pb2.FileEntry(name=e.name, size=e.size, sha256=e.sha256)
                                             for e in entries])
        try:
            return self._push_once(header, paths, entries, progress, chunk_size, dedupe=True)
        except BlobMissing:
            # a blob we skipped vanished in between (garbage collection): send everything
            return self._push_once(header, paths, entries, progress, chunk_size, dedupe=False)

    def _push_once(self, header, paths, entries, progress, chunk_size, dedupe: bool) -> PushOutcome:
        missing = set(self._call("MissingBlobs", store_pb2.MissingBlobsRequest(
            sha256=sorted({e.sha256 for e in entries}))).sha256) if dedupe else {e.sha256 for e in entries}

        def requests() -> Iterator[store_pb2.PushRequest]:
            yield store_pb2.PushRequest(header=header)
            sent = set()
            for path, entry in zip(paths, entries, strict=True):
                if entry.sha256 not in missing or entry.sha256 in sent:
                    if progress:
                        progress(entry.size)
                    continue
                sent.add(entry.sha256)
                with open(path, "rb") as f:
                    offset = 0
                    while data := f.read(chunk_size):
                        yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file=entry.name, offset=offset, data=data))
                        offset += len(data)
                        if progress:
                            progress(len(data))

        out = self._call("Push", requests())
        return PushOutcome(pc.manifest_from_pb(out.manifest), out.created, out.bytes_received, out.bytes_deduplicated)

    # --- fetch ----------------------------------------------------------------------------------------------------
    def fetch(self, ref: str, *, progress: Progress | None = None, routing_key: str = "",
              max_resumes: int = 5) -> tuple[Manifest, dict[str, bytes]]:
        """Fetch a version into memory; every file verified against its sha256 before it is returned."""
        parts: dict[str, list[bytes]] = {}
        manifest = self._download(ref, lambda name: parts.setdefault(name, []).append,
                                  progress=progress, routing_key=routing_key, max_resumes=max_resumes)
        return manifest, {e.name: b"".join(parts.get(e.name, ())) for e in manifest.files}  # one copy, at the end

    def pull(self, ref: str, dest: str | os.PathLike, *, progress: Progress | None = None) -> Manifest:
        """Download a version into directory ``dest``; it appears whole (verified) or not at all."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        handles: dict[str, object] = {}
        try:
            def sink(name: str):
                if name not in handles:
                    handles[name] = open(tmp / name, "wb")  # noqa: SIM115 - closed in the finally below
                return handles[name].write  # type: ignore[attr-defined]

            manifest = self._download(ref, sink, progress=progress)
            for f in handles.values():
                f.close()  # type: ignore[attr-defined]
            for entry in manifest.files:  # zero-length files get no chunk
                (tmp / entry.name).touch()
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
            return manifest
        finally:
            for f in handles.values():
                f.close()  # type: ignore[attr-defined]
            shutil.rmtree(tmp, ignore_errors=True)

    def _download(self, ref: str, sink: Callable[[str], Callable[[bytes], object]], *,
                  progress: Progress | None = None, routing_key: str = "", max_resumes: int = 5) -> Manifest:
        manifest: Manifest | None = None
        hashes: dict[str, hashlib._Hash] = {}
        sizes: dict[str, int] = {}
        resume_file, resume_offset = "", 0
        for attempt in range(max_resumes + 1):
            request = store_pb2.FetchRequest(ref=ref if manifest is None else str(manifest.key),
                                             resume_file=resume_file, resume_offset=resume_offset,
                                             routing_key=routing_key)
            try:
                for msg in self._stub.Fetch(request, timeout=self._timeout):
                    if msg.HasField("manifest"):
                        got = pc.manifest_from_pb(msg.manifest)
                        if manifest is not None and got.digest != manifest.digest:
                            raise ChecksumMismatch(f"resumed fetch returned {got.key}, expected {manifest.key}")
                        manifest = got
                        continue
                    chunk = msg.chunk
                    if chunk.offset != sizes.get(chunk.file, 0):
                        raise ChecksumMismatch(f"{chunk.file}: chunk at offset {chunk.offset}, expected "
                                               f"{sizes.get(chunk.file, 0)}")
                    hashes.setdefault(chunk.file, hashlib.sha256()).update(chunk.data)
                    sizes[chunk.file] = chunk.offset + len(chunk.data)
                    sink(chunk.file)(chunk.data)
                    resume_file, resume_offset = chunk.file, sizes[chunk.file]
                    if progress:
                        progress(len(chunk.data))
                break
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                if manifest is None or err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                                          grpc.StatusCode.UNKNOWN) or attempt == max_resumes:
                    raise error from None
        assert manifest is not None
        for entry in manifest.files:
            actual = hashes.get(entry.name, hashlib.sha256()).hexdigest()
            if actual != entry.sha256 or sizes.get(entry.name, 0) != entry.size:
                self.report_corrupt([entry.sha256])
                raise ChecksumMismatch(
                    f"{manifest.key}: {entry.name} arrived as {sizes.get(entry.name, 0)} bytes with sha256 {actual}, "
                    f"but the manifest says {entry.size} bytes with sha256 {entry.sha256}; the stored blob is "
                    "corrupt: re-push the adapter from a good copy"
                )
        return manifest

    # --- the rest -------------------------------------------------------------------------------------------------
    def report_corrupt(self, digests: list[str]) -> list[str]:
        """Tell the store these blobs arrived with other bytes than their digests; it re-reads them and quarantines
        the bad ones, so that a re-push sends their bytes again. Best effort: returns the quarantined digests, or
        [] when the store could not be told (the caller is raising the mismatch anyway)."""
        try:
            return list(self._call("ReportCorrupt", store_pb2.ReportCorruptRequest(sha256=digests)).quarantined)
        except AdapterFleetError as err:
            log.warning("could not report corrupt blobs %s to the store: %s", digests, err)
            return []

    def resolve(self, ref: str, routing_key: str = "") -> Resolved:
        r = self._call("Resolve", store_pb2.ResolveRequest(ref=ref, routing_key=routing_key))
        return pc.resolution_from_pb(r)

    def list_adapters(self, prefix: str = "") -> list[AdapterSummary]:
        return [pc.summary_from_pb(a)
                for a in self._call("ListAdapters", store_pb2.ListAdaptersRequest(prefix=prefix)).adapters]

    def list_versions(self, name: str) -> tuple[list[Manifest], dict[str, Targets]]:
        r = self._call("ListVersions", store_pb2.ListVersionsRequest(name=name))
        return ([pc.manifest_from_pb(m) for m in r.versions],
                {a.alias: pc.targets_from_pb(a.targets) for a in r.aliases})

    def set_alias(self, name: str, alias: str, targets: Targets, expect: Targets | str | None = "any") -> None:
        request = store_pb2.SetAliasRequest(name=name, alias=alias, targets=pc.targets_to_pb(targets))
        if (exp := pc.expectation_to_pb(expect)) is not None:
            request.expect.CopyFrom(exp)
        self._call("SetAlias", request)

    def delete_alias(self, name: str, alias: str, expect: Targets | str | None = "any") -> None:
        request = store_pb2.DeleteAliasRequest(name=name, alias=alias)
        if (exp := pc.expectation_to_pb(expect)) is not None:
            request.expect.CopyFrom(exp)
        self._call("DeleteAlias", request)

    def yank(self, name: str, version: int, force: bool = False) -> Manifest:
        return pc.manifest_from_pb(self._call("YankVersion", store_pb2.YankVersionRequest(
            name=name, version=version, force=force)))

    def collect_garbage(self, dry_run: bool = False, min_age: float | None = None) -> GcReport:
        request = store_pb2.CollectGarbageRequest(dry_run=dry_run)
        if min_age is not None:
            request.min_age_seconds = min_age
        return pc.gc_report_from_pb(self._call("CollectGarbage", request))

    def watch(self, cursor: str = "", name: str = "") -> Iterator[StoreEvent]:
        try:
            for pb in self._stub.Watch(store_pb2.WatchRequest(cursor=cursor, name=name)):
                yield pc.event_from_pb(pb)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise error_from_rpc(err) from None
