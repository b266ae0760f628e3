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
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import grpc

from adapterfleet.common.errors import AdapterFleetError, BlobMissing, ChecksumMismatch, InvalidArgument, UnsafeFileName
from adapterfleet.common.grpc_errors import error_from_rpc
from adapterfleet.common.security import INSECURE, ClientSecurity, open_channel
from adapterfleet.common.signing import sign_dir
from adapterfleet.store import proto_convert as pc
from adapterfleet.store.direct_fetch import BlobUrl, DirectFetchConfig, DirectFetcher
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.filenames import CONFIG_FILE, WEIGHTS_FILE, inside
from adapterfleet.store.listing import AdapterSummary, GcReport
from adapterfleet.store.manifest import BaseModelIdentity, FileEntry, Manifest
from adapterfleet.store.pull_dest import check_pull_dest, install_pull
from adapterfleet.store.refs import Ref
from adapterfleet.store.resolved import Resolved
from adapterfleet.store.status import StoreStatusReport, status_from_pb
from adapterfleet.store.targets import Targets
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc

log = logging.getLogger("adapterfleet.store.client")

CHUNK = 1 << 20
RESOLVED_URLS_KEPT = 64  # resolve(direct=True) answers kept for the fetch that follows
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


def _whole(parts: list[bytes]) -> bytes:
    """The file from its parts, as one bytearray (a worker views tensors in it without a copy); a direct read's
    single buffer as it is."""
    whole = parts[0] if len(parts) == 1 and isinstance(parts[0], bytearray) else bytearray().join(parts)
    return cast(bytes, whole)  # read-only use everywhere: a bytearray serves as the bytes it holds


class StoreClient:
    def __init__(self, address: str, *, timeout: float | None = None, channel: grpc.Channel | None = None,
                 security: ClientSecurity = INSECURE, direct: DirectFetchConfig | None = None):
        self.address = address
        self.direct = DirectFetcher(direct)  # blobs by presigned URL when the store gives them
        self._channel = channel or open_channel(address, security)
        self._stub = store_pb2_grpc.AdapterStoreStub(self._channel)
        self._timeout = timeout
        # key -> (manifest, URLs, client-clock time received) from the last resolve(direct=True) that got URLs: the
        # fetch of that key that usually follows GETs them at once, without a Fetch call. Bounded; used once.
        self._resolved_urls: OrderedDict[str, tuple[Manifest, tuple[BlobUrl, ...], float]] = OrderedDict()
        self._urls_lock = threading.Lock()

    def close(self) -> None:
        self._channel.close()
        self.direct.close()

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
                 chunk_size: int = CHUNK, sign_key: str | os.PathLike | None = None) -> PushOutcome:
        """``sign_key``: a PEM elliptic-curve private key; the files pushed are signed (OpenSSF Model Signing) and
        the signature is stored with the version (needs ``adapterfleet[signing]``)."""
        paths = adapter_files(Path(directory))
        entries = [hash_file(p) for p in paths]
        signature = sign_dir(directory, [p.name for p in paths], sign_key) if sign_key else ""
        header = store_pb2.PushHeader(name=name, alias=alias, parent=parent,
                                      base_model=pc.base_to_pb(base_model or BaseModelIdentity()),
                                      files=[common_pb2.FileEntry(name=e.name, size=e.size, sha256=e.sha256)
                                             for e in entries], signature=signature)
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
                # a file with the bytes of one sent before is not sent again, except the config and the weights,
                # which the store reads as they arrive
                again = entry.sha256 in sent and entry.name not in (CONFIG_FILE, WEIGHTS_FILE)
                if entry.sha256 not in missing or again:
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
        early = self._fetch_resolved(ref, progress)
        if early is not None:
            return early
        parts: dict[str, list[bytes]] = {}
        manifest = self._download(ref, lambda name: parts.setdefault(name, []).append,
                                  progress=progress, routing_key=routing_key, max_resumes=max_resumes)
        # one copy at the end; a file read by URL arrived whole into its own buffer: no copy at all
        return manifest, {e.name: _whole(parts.get(e.name, [])) for e in manifest.files}

    def pull(self, ref: str, dest: str | os.PathLike, *, progress: Progress | None = None,
             force: bool = False) -> Manifest:
        """Download a version into directory ``dest``, verified, through a temporary directory beside it.

        A new (or empty) ``dest`` appears whole or not at all. An existing one must be an earlier pull of the same
        adapter name (its marker file says so) unless ``force``; either way only the adapter's own files are
        replaced (and, for an earlier pull, its files that the new version no longer has removed): nothing else in
        ``dest`` is touched, and no byte is written outside it (every name was checked on arrival)."""
        dest = Path(dest)
        previous = check_pull_dest(dest, Ref.parse(ref).name, force=force)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        handles: dict[str, object] = {}
        try:
            def sink(name: str):
                if name not in handles:
                    handles[name] = open(inside(tmp, name), "xb")  # noqa: SIM115 - closed in the finally below
                return handles[name].write  # type: ignore[attr-defined]

            manifest = self._download(ref, sink, progress=progress)
            for f in handles.values():
                f.close()  # type: ignore[attr-defined]
            for entry in manifest.files:  # zero-length files get no chunk
                inside(tmp, entry.name).touch()
            install_pull(tmp, dest, manifest, previous)
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
        direct, direct_done, fallback = self.direct.cfg.enabled, set[str](), False
        attempt = 0
        while True:
            request = store_pb2.FetchRequest(ref=ref if manifest is None else str(manifest.key),
                                             resume_file=resume_file, resume_offset=resume_offset,
                                             routing_key=routing_key, direct=direct)
            try:
                for msg in self._stub.Fetch(request, timeout=self._timeout):
                    if msg.HasField("manifest"):
                        got = pc.manifest_from_pb(msg.manifest)
                        if manifest is not None and got.digest != manifest.digest:
                            raise ChecksumMismatch(f"resumed fetch returned {got.key}, expected {manifest.key}")
                        manifest = got
                        continue
                    if msg.HasField("urls") and manifest is not None and direct:
                        # presigned URLs instead of bytes: GET them from S3 (verified); whatever they do not
                        # deliver comes through the store's stream next, from the first such file on
                        direct = False
                        direct_done = self._fetch_direct(manifest, pc.blob_urls_from_pb(msg.urls),
                                                         self.direct.clock(), sink, progress)
                        pending = [e.name for e in manifest.files if e.name not in direct_done]
                        fallback = bool(pending)
                        resume_file, resume_offset = (pending[0] if pending else ""), 0
                        continue
                    chunk = msg.chunk
                    if chunk.file in direct_done:
                        continue  # read by URL already (a fallback stream carries every file after its first)
                    if manifest is None or all(e.name != chunk.file for e in manifest.files):
                        raise UnsafeFileName(f"the store sent bytes of {chunk.file[:80]!r}, which its manifest does "
                                             "not list; nothing was written for it: the store is broken or hostile")
                    if chunk.offset != sizes.get(chunk.file, 0):
                        raise ChecksumMismatch(f"{chunk.file}: chunk at offset {chunk.offset}, expected "
                                               f"{sizes.get(chunk.file, 0)}")
                    hashes.setdefault(chunk.file, hashlib.sha256()).update(chunk.data)
                    sizes[chunk.file] = chunk.offset + len(chunk.data)
                    sink(chunk.file)(chunk.data)
                    resume_file, resume_offset = chunk.file, sizes[chunk.file]
                    if progress:
                        progress(len(chunk.data))
                if not fallback:
                    break
                fallback = False
            except grpc.RpcError as err:
                error = error_from_rpc(err)
                if manifest is None or err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL,
                                                          grpc.StatusCode.UNKNOWN) or attempt == max_resumes:
                    raise error from None
                attempt += 1
                direct = False  # a resumed stream carries bytes
        assert manifest is not None
        for entry in manifest.files:
            if entry.name in direct_done:
                continue  # verified on arrival by the direct fetcher
            actual = hashes.get(entry.name, hashlib.sha256()).hexdigest()
            if actual != entry.sha256 or sizes.get(entry.name, 0) != entry.size:
                self.report_corrupt([entry.sha256])
                raise ChecksumMismatch(
                    f"{manifest.key}: {entry.name} arrived as {sizes.get(entry.name, 0)} bytes with sha256 {actual}, "
                    f"but the manifest says {entry.size} bytes with sha256 {entry.sha256}; the stored blob is "
                    "corrupt: re-push the adapter from a good copy"
                )
        return manifest

    def _fetch_direct(self, manifest: Manifest, urls: tuple[BlobUrl, ...], received_at: float,
                      sink: Callable[[str], Callable[[bytes], object]], progress: Progress | None) -> set[str]:
        """GET the files the store gave URLs for (answered at client-clock ``received_at``); each verified file goes
        to ``sink`` whole. Returns their names."""
        return self.direct.fetch_files(manifest, urls, received_at, lambda name, data: sink(name)(cast(bytes, data)),
                                       progress, on_corrupt=lambda sha: self.report_corrupt([sha]))

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

    def _fetch_resolved(self, key: str, progress: Progress | None) -> tuple[Manifest, dict[str, bytes]] | None:
        """``key``'s files by the URLs its resolve answered (verified as they arrive), or None: no such URLs, or
        not every file came that way (the caller fetches through the store then, which may answer URLs again)."""
        with self._urls_lock:
            remembered = self._resolved_urls.pop(key, None)
        if remembered is None or not self.direct.cfg.enabled:
            return None
        manifest, urls, received_at = remembered
        got: dict[str, bytes] = {}
        done = self._fetch_direct(manifest, urls, received_at, lambda name: partial(got.__setitem__, name),
                                  progress)
        if len(done) != len(manifest.files):
            return None
        return manifest, {e.name: got[e.name] for e in manifest.files}

    def resolve(self, ref: str, routing_key: str = "", *, direct: bool = False) -> Resolved:
        """``direct``: also ask for presigned URLs of the chosen version's files, for a caller about to fetch it
        (they are kept, and the next ``fetch`` of that key GETs them without a Fetch call)."""
        r = self._call("Resolve", store_pb2.ResolveRequest(ref=ref, routing_key=routing_key, direct=direct))
        resolved = pc.resolution_from_pb(r)
        if direct:
            self.keep_urls(resolved)
        return resolved

    def keep_urls(self, resolved: Resolved) -> None:
        """Keep the presigned URLs of a Resolve answer that has them (asked with ``direct``), received just now, for
        the ``fetch`` of its key that usually follows. A worker resolves on its event loop with an asyncio client
        and hands the answer here."""
        if not resolved.urls:
            return
        with self._urls_lock:
            self._resolved_urls[resolved.key] = (resolved.manifest, resolved.urls, self.direct.clock())
            self._resolved_urls.move_to_end(resolved.key)
            while len(self._resolved_urls) > RESOLVED_URLS_KEPT:
                self._resolved_urls.popitem(last=False)

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

    def revoke_token(self, token_id: str, expires: float = 0.0) -> str:
        """Refuse ``token_id`` fleet-wide from now on (admin, tenant '*'); returns the event's cursor."""
        return self._call("RevokeToken", store_pb2.RevokeTokenRequest(token_id=token_id, expires=expires)).cursor

    def status(self, since: str = "") -> StoreStatusReport:
        """The store's role, its event stream and, in a secondary region, its replication (cursor, lag, blobs)."""
        return status_from_pb(self._call("Status", store_pb2.StatusRequest(since=since)))

    def watch(self, cursor: str = "", name: str = "") -> Iterator[StoreEvent]:
        try:
            for pb in self._stub.Watch(store_pb2.WatchRequest(cursor=cursor, name=name)):
                yield pc.event_from_pb(pb)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise error_from_rpc(err) from None
