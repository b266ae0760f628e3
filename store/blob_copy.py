"""Copying blobs from the primary into a secondary region's bucket, verified.

A blob is streamed from the primary's Fetch into this region's BlobWriter, which hashes every byte and publishes
only bytes that hash to the manifest's sha256: a blob that was altered in the primary's bucket is refused
(DATA_LOSS) and never stored, so it can never be served here. Copies of one blob are single-flight: many workers
fetching a new version at once cost one copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection

from adapterfleet.common.aio import listed_task
from adapterfleet.common.errors import ChecksumMismatch
from adapterfleet.store.blobs.base import BlobStore
from adapterfleet.store.manifest import FileEntry, Manifest
from adapterfleet.store.primary_client import PrimaryClient
from adapterfleet.store.replica_index import ReplicaIndex

log = logging.getLogger("adapterfleet.store.replication")
PRESENT_MAX = 1 << 20  # blob digests remembered as present (~100 MB at most)


class BlobCopier:
    def __init__(self, blobs: BlobStore, primary: PrimaryClient, index: ReplicaIndex, concurrency: int = 4):
        self.blobs = blobs
        self.primary = primary
        self.index = index
        self._concurrency = concurrency
        self._slots: asyncio.Semaphore | None = None
        self._copying: dict[str, asyncio.Future] = {}    # sha256 -> its plain copy under way
        self._replacing: dict[str, asyncio.Future] = {}  # sha256 -> its copy over a copy known bad, under way
        # blobs known to be in this bucket (copied, or seen there): blobs are immutable and a secondary never deletes
        # one (GC runs on the primary), so a fetch asks the bucket about each blob once, not on every fetch
        self._present: set[str] = set()
        self.copied = 0          # blobs copied and verified
        self.bytes_copied = 0
        self.refused = 0         # copies refused: the primary's bytes did not hash to the manifest

    async def ensure(self, manifest: Manifest, replace: Collection[str] = ()) -> None:
        """Every blob of ``manifest`` is in this region's bucket (copied and verified now if it was not); the blobs
        in ``replace`` (this bucket's copy is known bad: quarantined) are copied again over it."""
        entries = [f for f in {f.sha256: f for f in manifest.files}.values()
                   if f.sha256 not in self._present or f.sha256 in replace]
        if not entries:
            return
        present = await asyncio.gather(*(asyncio.to_thread(self.blobs.exists, f.sha256) for f in entries))
        missing = [f for f, ok in zip(entries, present, strict=True) if not ok or f.sha256 in replace]
        if missing:
            await asyncio.gather(*(self.copy(str(manifest.key), f, f.sha256 in replace) for f in missing))
        here = [f.sha256 for f in entries if f not in missing]
        if here:
            await self.index.copied(here)
            self._remember(here)

    async def ensure_known(self, manifest: Manifest) -> None:
        """Mark the blobs of ``manifest`` this bucket already has as copied (no copy: lazy replication)."""
        shas = {f.sha256 for f in manifest.files}
        known = [sha for sha in shas if sha in self._present]
        ask = [sha for sha in shas if sha not in self._present]
        present = await asyncio.gather(*(asyncio.to_thread(self.blobs.exists, sha) for sha in ask))
        here = known + [sha for sha, ok in zip(ask, present, strict=True) if ok]
        if here:
            await self.index.copied(here)
            self._remember(here)

    async def copy(self, key: str, entry: FileEntry, replace: bool = False) -> None:
        """Copy one blob (of version ``key``) unless a copy of it is already under way; then wait for that one. A
        copy that replaces (this bucket's copy is known bad) does not join a plain one, which finds the blob there
        and copies nothing: it waits for that one to end, then copies."""
        sha = entry.sha256
        if replace:
            while (plain := self._copying.get(sha)) is not None and sha not in self._replacing:
                with contextlib.suppress(Exception):  # the plain copy's outcome is not ours: we copy next either way
                    await asyncio.shield(plain)
            joined = self._replacing.get(sha)
        else:
            joined = self._replacing.get(sha) or self._copying.get(sha)
        if joined is None:
            joined = listed_task(self._replacing if replace else self._copying, sha, self._copy(key, entry, replace))
        await asyncio.shield(joined)

    def _remember(self, blobs: list[str]) -> None:
        if len(self._present) > PRESENT_MAX:
            self._present.clear()  # asked again on the next fetch: correct, one round trip more
        self._present.update(blobs)

    async def _copy(self, key: str, entry: FileEntry, replace: bool) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        async with self._slots:
            if not replace and await asyncio.to_thread(self.blobs.exists, entry.sha256):
                await self.index.copied([entry.sha256])
                self._remember([entry.sha256])
                return
            writer = await asyncio.to_thread(self.blobs.writer, entry.sha256, entry.size)
            try:
                async for data in self.primary.file_bytes(key, entry.name):
                    if writer.received + len(data) > entry.size:
                        raise self._refuse(key, entry, f"more than its {entry.size} bytes")
                    await asyncio.to_thread(writer.write, data)
                try:
                    await asyncio.to_thread(writer.commit)
                except ChecksumMismatch:
                    raise self._refuse(key, entry, f"{writer.received} bytes that do not hash to it") from None
            except BaseException:
                await asyncio.to_thread(writer.abort)
                raise
        self.copied += 1
        self.bytes_copied += entry.size
        await self.index.copied([entry.sha256])
        self._remember([entry.sha256])
        log.info("copied blob %s (%s of %s, %d bytes) from the primary", entry.sha256[:12], entry.name, key,
                 entry.size)

    def _refuse(self, key: str, entry: FileEntry, what: str) -> ChecksumMismatch:
        self.refused += 1
        log.error("refused blob %s (%s of %s) from the primary at %s: it sent %s", entry.sha256, entry.name, key,
                  self.primary.address, what)
        return ChecksumMismatch(
            f"{entry.name} of {key} (sha256 {entry.sha256}) came from the primary store at {self.primary.address} "
            f"as {what}: the primary's copy is corrupt, and nothing was stored or served here; re-push the adapter "
            "to the primary from a good copy")
