"""Content-addressed blob storage: the small interface every backend implements.

Blobs are keyed by the sha256 of their bytes. A writer makes a blob visible only after its bytes hashed to the
promised digest (commit); anything else (abort, crash) leaves nothing visible under that key.
All methods are blocking; async callers run them in a thread. A backend raises only AdapterFleetError subclasses
(Unavailable when it cannot be reached, FailedPrecondition when it is misconfigured, PermissionDenied, NotFound,
ResourceExhausted), never its client library's own exceptions: those would reach callers as INTERNAL.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from adapterfleet.common.errors import ChecksumMismatch, NotFound


@dataclass(frozen=True)
class BlobInfo:
    sha256: str
    size: int
    modified: float  # unix seconds


class BlobWriter(abc.ABC):
    """Receives the bytes of one blob in order, hashing as they come."""

    def __init__(self, sha256: str, size: int):
        self.sha256 = sha256
        self.size = size
        self.received = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._hash.update(data)
        self.received += len(data)
        self._write(data)

    def commit(self) -> None:
        """Publish the blob under its digest, or raise ChecksumMismatch and publish nothing."""
        self.verify()
        self._commit()

    def verify(self) -> None:
        """Raise ChecksumMismatch (and abort) unless exactly the promised bytes arrived."""
        actual = self._hash.hexdigest()
        if self.received != self.size or actual != self.sha256:
            self.abort()
            raise ChecksumMismatch(
                f"blob received {self.received} bytes with sha256 {actual}, but the push header promised "
                f"{self.size} bytes with sha256 {self.sha256}; the file changed while it was being pushed or was "
                "corrupted in transit: push again"
            )

    @abc.abstractmethod
    def _write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; idempotent."""


class BlobStore(abc.ABC):
    @abc.abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abc.abstractmethod
    def size(self, sha256: str) -> int | None:
        """The stored blob's size in bytes, or None when it is missing."""

    @abc.abstractmethod
    def writer(self, sha256: str, size: int) -> BlobWriter: ...

    @abc.abstractmethod
    def read(self, sha256: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """Yield the blob's bytes from ``offset`` in chunks of at most ``chunk_size``."""

    @abc.abstractmethod
    def list(self) -> Iterator[BlobInfo]: ...

    @abc.abstractmethod
    def delete(self, sha256: str) -> None: ...

    def holds_intact(self, sha256: str) -> bool:
        """Re-read the stored blob and say whether its bytes hash to ``sha256`` (False when it is missing too).
        A full read: only for a receiver's report of a mismatch (see store/quarantine.py)."""
        digest = hashlib.sha256()
        try:
            for chunk in self.read(sha256):
                digest.update(chunk)
        except NotFound:
            return False
        return digest.hexdigest() == sha256

    def abort_stale_uploads(self, older_than: float) -> int:
        """Abort half-finished uploads started before the unix time ``older_than``; returns how many."""
        return 0

    def presign(self, sha256: str) -> tuple[str, float] | None:
        """A URL a client can GET the blob from without credentials, and how many seconds it stays valid; None
        when the backend cannot give one (then its bytes stream through the store). Costs no round trip."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook: most backends hold nothing to close
        """Release what the backend holds (threads, connections); the default holds nothing."""
