"""The secondary's blob copier: a copy that replaces a copy known bad is not satisfied by a plain copy of the same
blob under way (that one finds the blob there and copies nothing)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import redis.asyncio as aioredis

from adapterfleet.store.blob_copy import BlobCopier
from adapterfleet.store.blobs.local import LocalBlobStore
from adapterfleet.store.manifest import FileEntry
from adapterfleet.store.replica_index import ReplicaIndex

KEY = "acme/a@sha256:" + "ab" * 32


class GatedPrimary:
    """The primary's Fetch of one file: ``held`` waits for ``gate``; the others answer at once."""

    address = "primary.test:1"

    def __init__(self, files: dict[str, bytes]):
        self.files, self.gate, self.sent = files, asyncio.Event(), []

    async def file_bytes(self, key: str, file: str, offset: int = 0):
        if file == "held":
            await self.gate.wait()
        self.sent.append(file)
        yield self.files[file][offset:]


def entry(name: str, data: bytes) -> FileEntry:
    return FileEntry(name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest())


def test_a_replacing_copy_waits_for_a_plain_copy_of_the_same_blob_then_copies(redis_server, tmp_path):
    good, other = b"good weights " * 100, b"another blob " * 100
    bad_copy, held = entry("weights", good), entry("held", other)
    blobs = LocalBlobStore(tmp_path / "bucket")
    blobs.ensure()
    writer = blobs.writer(bad_copy.sha256, bad_copy.size)
    writer.write(good)
    writer.commit()
    stored = tmp_path / "bucket" / "sha256" / bad_copy.sha256[:2] / bad_copy.sha256
    stored.write_bytes(good[:-1] + b"!")  # gone bad in this bucket (found so, and quarantined)

    async def main():
        client = aioredis.Redis.from_url(redis_server.url)
        primary = GatedPrimary({"weights": good, "held": other})
        copier = BlobCopier(blobs, primary, ReplicaIndex(client, f"t{uuid.uuid4().hex[:8]}:"),  # type: ignore[arg-type]
                            concurrency=1)
        try:
            first = asyncio.ensure_future(copier.copy(KEY, held))  # takes the one copy slot, and keeps it a while
            await asyncio.sleep(0.05)
            plain = asyncio.ensure_future(copier.copy(KEY, bad_copy))  # a fetch that did not know: queued
            await asyncio.sleep(0.05)
            replacing = asyncio.ensure_future(copier.copy(KEY, bad_copy, replace=True))
            await asyncio.sleep(0.05)
            primary.gate.set()
            await asyncio.wait_for(asyncio.gather(first, plain, replacing), 10)
        finally:
            await client.aclose()
        return primary.sent

    sent = asyncio.run(main())
    assert stored.read_bytes() == good
    assert sent == ["held", "weights"]  # the plain copy found the blob there; the replacing one copied it
