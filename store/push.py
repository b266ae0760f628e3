"""One push: validate while the bytes stream in, write blobs content-addressed, then commit atomically.

Order of events, and why nothing half-written is ever visible:
  header  -> names, sizes and limits checked; blobs leased so GC leaves them alone while we work
  chunks  -> each file hashed and written as it arrives (S3 multipart: parts invisible until completed);
             adapter_config.json parsed when complete, the safetensors header parsed as soon as its bytes are in
  end     -> files the client skipped (already stored) must exist; tensors checked against the config;
             each blob committed only if its bytes hash to the promised sha256;
             then one Lua script assigns the version number and publishes the event.
A failure at any step aborts the uploads and releases the leases: no version, no visible blob.

Validation never holds the event loop for long: the store's Validator (validator.py) parses the config and the
header and checks the tensors against the config in validator processes (or threads), each step under a CPU
budget, with sizes bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field

from adapterfleet.common.errors import (
    BlobMissing,
    FailedPrecondition,
    InvalidAdapter,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from adapterfleet.store.blobs.base import BlobStore, BlobWriter
from adapterfleet.store.config import StoreConfig
from adapterfleet.store.filenames import CONFIG_FILE, WEIGHTS_FILE
from adapterfleet.store.index import RedisIndex
from adapterfleet.store.manifest import BaseModelIdentity, FileEntry, Manifest, check_file_entries
from adapterfleet.store.refs import AdapterKey, validate_alias, validate_name
from adapterfleet.store.safetensors_header import header_bytes_needed
from adapterfleet.store.signatures import check_signature_for
from adapterfleet.store.validation import check_file_name, check_file_set
from adapterfleet.store.validator import ConfigFacts, HeaderFacts, Validator


@dataclass(frozen=True)
class PushHeader:
    name: str
    files: tuple[FileEntry, ...]
    alias: str = ""
    base_model: BaseModelIdentity = field(default_factory=BaseModelIdentity)
    parent: str = ""
    signature: str = ""  # OpenSSF Model Signing bundle over exactly these files (checked in shape, not trust)


@dataclass(frozen=True)
class PushResult:
    manifest: Manifest
    created: bool
    bytes_received: int
    bytes_deduplicated: int


MAX_BASE_MODEL_CHARS = 1024  # a hub name or a path; it goes into every manifest and every Resolve of the version


def check_header(header: PushHeader, cfg: StoreConfig) -> None:
    validate_name(header.name)
    if header.alias:
        validate_alias(header.alias)
    if header.parent:
        AdapterKey.parse(header.parent)  # canonical (bounded) or InvalidArgument, which says what it expects
    base = header.base_model
    for what, text in (("name_or_path", base.name_or_path), ("fingerprint", base.fingerprint)):
        if len(text) > MAX_BASE_MODEL_CHARS:
            raise InvalidArgument(f"the base model's {what} is {len(text)} characters, more than the limit of "
                                  f"{MAX_BASE_MODEL_CHARS}")
    lim = cfg.limits
    if len(header.files) > lim.max_files:
        raise InvalidAdapter(f"{len(header.files)} files is more than the limit of {lim.max_files}")
    for f in header.files:
        check_file_name(f.name)
    check_file_set([f.name for f in header.files])
    check_file_entries(list(header.files))
    for f in header.files:
        limit = {CONFIG_FILE: lim.max_config_bytes, WEIGHTS_FILE: lim.max_file_bytes}.get(f.name,
                                                                                         lim.max_extra_file_bytes)
        if f.size > limit:
            raise InvalidAdapter(f"{f.name} is {f.size} bytes, more than the limit of {limit}")
    total = sum(f.size for f in header.files)
    if total > lim.max_total_bytes:
        raise InvalidAdapter(f"the adapter is {total} bytes in all, more than the limit of {lim.max_total_bytes}")
    if header.signature:  # bounded, well formed, and over exactly these files: kept beside the version
        check_signature_for(header.signature, {f.name: f.sha256 for f in header.files})


class PushSession:
    def __init__(self, header: PushHeader, blobs: BlobStore, index: RedisIndex, cfg: StoreConfig,
                 validator: Validator):
        self.header = header
        self._validator = validator
        self._blobs = blobs
        self._index = index
        self._cfg = cfg
        self._id = uuid.uuid4().hex
        self._files = {f.name: f for f in header.files}
        self._writers: dict[str, BlobWriter] = {}
        self._current: str | None = None
        self._prefix: dict[str, bytearray] = {}  # config bytes / safetensors header bytes as they arrive
        self._spec: ConfigFacts | None = None
        self._config_bytes = b""
        self._header_bytes: bytes | None = None  # the safetensors header, length prefix included, once complete
        self._tensors: HeaderFacts | None = None  # once the header is parsed (where: see validator.py)
        self._received = 0
        self._blob_ids = sorted({f.sha256 for f in header.files})
        self._pending: asyncio.Future | None = None
        self._offsets: dict[str, int] = {}  # bytes accepted per file (writes may still be in flight)

    async def start(self) -> None:
        check_header(self.header, self._cfg)
        for _ in range(50):  # GC may be deleting one of our blobs right now; wait for it to finish
            doomed = await self._index.lease(self._id, time.time() + self._cfg.lease_seconds, self._blob_ids)
            if doomed is None:
                return
            await asyncio.sleep(0.1)
        raise Unavailable(f"garbage collection is deleting blob {doomed}; retry the push in a few seconds")

    async def feed(self, file: str, offset: int, data: bytes) -> None:
        entry = self._files.get(file)
        if entry is None:
            raise InvalidArgument(f"chunk for {file!r}, which the push header does not list")
        if file != self._current:
            if file in self._writers:
                raise InvalidArgument(f"chunks of {file!r} were interleaved with another file; send files one by one")
            await self._finish_file()
            self._current = file
            self._writers[file] = self._blobs.writer(entry.sha256, entry.size)
            self._prefix[file] = bytearray()
        writer, expected = self._writers[file], self._offsets.get(file, 0)
        if offset != expected:
            raise InvalidArgument(f"chunk of {file!r} at offset {offset}, expected {expected}")
        if expected + len(data) > entry.size:
            raise InvalidAdapter(f"{file} is longer than the {entry.size} bytes the push header promised")
        header = self._collect_prefix(file, data)
        if header is not None:
            await self._parse_header(header, entry.size)
        await self._drain()  # at most one write in flight: hashing/uploading overlaps receiving the next chunk
        self._pending = asyncio.ensure_future(asyncio.to_thread(writer.write, data))
        self._offsets[file] = expected + len(data)
        self._received += len(data)

    async def _drain(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    def _collect_prefix(self, file: str, data: bytes) -> bytes | None:
        """Keep the config's bytes, and the safetensors header's; return the header once it is complete."""
        if file == CONFIG_FILE:
            self._prefix[file] += data
            return None
        if file != WEIGHTS_FILE or self._header_bytes is not None:
            return None
        buf = self._prefix[file]
        buf += data
        # refuses an oversized header as soon as its 8 length bytes are in, so we never buffer one
        need = header_bytes_needed(bytes(buf[:8]), max_header_bytes=self._cfg.limits.max_header_bytes)
        if need is None or len(buf) < need:
            return None
        self._prefix[file] = bytearray()
        return bytes(buf[:need])

    async def _parse_header(self, data: bytes, size: int) -> None:
        self._tensors = await self._validator.header(data, size)
        self._header_bytes = data

    async def _finish_file(self) -> None:
        await self._drain()
        if self._current is None:
            return
        name, writer = self._current, self._writers[self._current]
        if writer.received != writer.size:
            raise InvalidAdapter(f"{name} ended after {writer.received} of the {writer.size} bytes promised")
        if name == CONFIG_FILE:
            self._spec = await self._parse_config(bytes(self._prefix.pop(name)))
        self._current = None

    async def _parse_config(self, data: bytes) -> ConfigFacts:
        self._config_bytes = data
        return await self._validator.config(data)

    async def _load_skipped(self) -> int:
        """Files the client did not send: already stored, empty (stored with this push if need be), or, for files
        other than the config and the weights, the same bytes as a file this push sent (stored with it). The config
        and the weights are validated from the blob store."""
        skipped = 0
        sent = {w.sha256 for w in self._writers.values()}
        quarantined = await self._index.quarantine.members(
            e.sha256 for n, e in self._files.items() if n not in self._writers)
        for name, entry in self._files.items():
            if name in self._writers:
                continue
            if entry.sha256 in sent and name not in (CONFIG_FILE, WEIGHTS_FILE):
                continue  # e.g. two identical READMEs: the client sends the bytes once
            size = None if entry.sha256 in quarantined else await asyncio.to_thread(self._blobs.size, entry.sha256)
            stored = size is not None
            if not stored and entry.size == 0:  # a client sends no chunk for an empty file
                self._writers[name] = self._blobs.writer(entry.sha256, 0)
                sent.add(entry.sha256)
                if name == CONFIG_FILE:
                    self._spec = await self._parse_config(b"")  # refused, saying what a config needs
                continue
            if not stored:
                raise BlobMissing(
                    f"{name} (sha256 {entry.sha256}) was not sent and the store does not have it; push again "
                    "(the client re-checks which blobs are missing)"
                )
            if size != entry.size:  # the bytes of that sha256 are stored: the header's size is wrong
                raise InvalidAdapter(f"the push header says {name} is {entry.size} bytes, but the bytes with its "
                                     f"sha256 {entry.sha256} are {size}; push the files as they are on disk")
            skipped += entry.size
            if name == CONFIG_FILE:
                self._spec = await self._parse_config(await self._read(entry, entry.size))
            elif name == WEIGHTS_FILE:
                need = header_bytes_needed(await self._read(entry, 8))
                await self._parse_header(await self._read(entry, min(need or 8, entry.size)), entry.size)
        return skipped

    async def _read(self, entry: FileEntry, length: int) -> bytes:
        def read() -> bytes:
            out = bytearray()
            for chunk in self._blobs.read(entry.sha256, 0, chunk_size=max(length, 1)):
                out += chunk
                if len(out) >= length:
                    break
            return bytes(out[:length])

        return await asyncio.to_thread(read)

    async def finish(self) -> PushResult:
        await self._finish_file()
        skipped = await self._load_skipped()
        if self._header_bytes is None:
            raise InvalidAdapter(f"{WEIGHTS_FILE} ended before its safetensors header was complete")
        assert self._spec is not None and self._tensors is not None
        if len(self._spec.base_model_name_or_path or "") > MAX_BASE_MODEL_CHARS:
            raise InvalidAdapter(f"{CONFIG_FILE}'s base_model_name_or_path is longer than {MAX_BASE_MODEL_CHARS} "
                                 "characters; set it to the base model's hub name or path")
        await self._validator.adapter(self._spec, self._tensors)
        for writer in self._writers.values():
            writer.verify()  # ChecksumMismatch if the bytes are not the promised ones: then publish none
        for writer in self._writers.values():
            await asyncio.to_thread(writer.commit)
        await self._index.quarantine.lift(w.sha256 for w in self._writers.values())
        h = self.header
        base = h.base_model if h.base_model.name_or_path else BaseModelIdentity(
            self._spec.base_model_name_or_path or "", h.base_model.fingerprint)
        manifest = Manifest(
            name=h.name, files=tuple(sorted(h.files, key=lambda f: f.name)), base_model=base,
            peft_type="LORA", rank=self._spec.r, created_at=time.time(), parent=h.parent, signature=h.signature,
        )
        if h.signature:  # refused before the commit, which would move the alias to the unsigned version
            with contextlib.suppress(NotFound):
                self._refuse_unsigned(await self._index.manifest(h.name, manifest.digest))
        _, created = await self._index.commit(manifest, self._id, h.alias)
        stored = await self._index.manifest(h.name, manifest.digest)
        if h.signature:  # stored unsigned by a push that committed meanwhile
            self._refuse_unsigned(stored)
        return PushResult(stored, created, self._received, skipped)

    def _refuse_unsigned(self, stored: Manifest) -> None:
        """A signed re-push keeps the first signature (ECDSA signatures differ), and an unsigned version stays so."""
        if not stored.signature:
            raise FailedPrecondition(
                f"{self.header.name}@{stored.version} already holds these exact files, unsigned; a version's "
                "signature is fixed when it is first pushed: push the signed adapter with a change (e.g. its README) "
                "as a new version")

    async def abort(self) -> None:
        with contextlib.suppress(Exception):  # the error that got us here is already on its way
            await self._drain()
        for writer in self._writers.values():
            await asyncio.to_thread(writer.abort)
        with contextlib.suppress(Exception):  # leases expire on their own
            await self._index.release(self._id, self._blob_ids)
