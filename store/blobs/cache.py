"""An in-memory LRU of small blobs in front of any BlobStore.

Blobs are immutable and content-addressed, so a cached copy can never be stale: the cache needs no invalidation
beyond GC's deletes. Pushes fill it (write-through) and reads fill it, so the configs and weights of hot adapters
are served to many workers without a round trip to S3. Large blobs (over ``max_item``) always stream from the
backend. A cached copy says nothing about the backend, though: ``exists`` (what dedupe and a push's skipped files
rely on) always asks the backend, so a blob S3 lost is sent again rather than referred to by a new version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from adapterfleet.store.blobs.base import BlobInfo, BlobStore
from adapterfleet.store.byte_lru import ByteLru


class _CachingWriter:
    """Wraps a backend writer; keeps the bytes of a small blob to cache them once it is committed."""

    def __init__(self, inner, cache: CachedBlobStore):
        self._inner, self._cache = inner, cache
        self.sha256, self.size = inner.sha256, inner.size
        self._buf = bytearray() if inner.size <= cache.max_item else None

    @property
    def received(self) -> int:
        return self._inner.received

    def write(self, data: bytes) -> None:
        self._inner.write(data)
        if self._buf is not None:
            self._buf += data

    def verify(self) -> None:
        self._inner.verify()

    def commit(self) -> None:
        self._inner.commit()
        if self._buf is not None:
            self._cache.put(self.sha256, bytes(self._buf))

    def abort(self) -> None:
        self._buf = None
        self._inner.abort()


class CachedBlobStore(BlobStore):
    def __init__(self, inner: BlobStore, *, budget: int, max_item: int):
        self.inner = inner
        self._lru = ByteLru(budget, max_item)
        self.hits = 0
        self.misses = 0

    @property
    def max_item(self) -> int:
        return self._lru.max_item

    @property
    def nbytes(self) -> int:
        """Bytes held in memory now."""
        return self._lru.nbytes

    def get(self, sha256: str) -> bytes | None:
        return self._lru.get(sha256)

    def put(self, sha256: str, data: bytes) -> None:
        self._lru.put(sha256, data)  # a publish may replace a quarantined blob's bad copy

    def exists(self, sha256: str) -> bool:
        return self.inner.exists(sha256)  # never from memory: a version may only refer to blobs the backend holds

    def size(self, sha256: str) -> int | None:
        return self.inner.size(sha256)

    def writer(self, sha256: str, size: int):
        return _CachingWriter(self.inner.writer(sha256, size), self)

    def read(self, sha256: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        data = self.get(sha256)
        if data is not None:
            self.hits += 1
            for start in range(offset, len(data), chunk_size):
                yield data[start:start + chunk_size]
            return
        self.misses += 1
        keep = bytearray() if offset == 0 else None
        for chunk in self.inner.read(sha256, offset, chunk_size):
            if keep is not None:
                keep += chunk
                if len(keep) > self.max_item:
                    keep = None
            yield chunk
        # kept only if they are the bytes of their name: a read that began before a corrupt blob was re-pushed
        # would otherwise put the bad bytes back over the good ones the push cached, and serve them for good
        if keep is not None and hashlib.sha256(keep).hexdigest() == sha256:
            self.put(sha256, bytes(keep))

    def holds_intact(self, sha256: str) -> bool:
        """Asks the backend (the truth), never the memory; a blob found bad is dropped from memory too."""
        intact = self.inner.holds_intact(sha256)
        if not intact:
            self._lru.pop(sha256)
        return intact

    def list(self) -> Iterator[BlobInfo]:
        return self.inner.list()

    def delete(self, sha256: str) -> None:
        self._lru.pop(sha256)
        self.inner.delete(sha256)

    def abort_stale_uploads(self, older_than: float) -> int:
        return self.inner.abort_stale_uploads(older_than)

    def presign(self, sha256: str) -> tuple[str, float] | None:
        return self.inner.presign(sha256)

    def close(self) -> None:
        self.inner.close()
