"""Blobs in a local directory: the embedded default. Atomic by write-to-temp + rename."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adapterfleet.common.errors import (
    AdapterFleetError,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from adapterfleet.store.blobs.base import BlobInfo, BlobStore, BlobWriter


def translate(err: OSError, root: Path, what: str) -> AdapterFleetError:
    """A filesystem error as a typed one: a full disk, a read-only or unwritable data dir, anything else."""
    where = f"the blob directory {str(root)!r}"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(f"{where} is out of space while {what}: free space or run garbage collection")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return FailedPrecondition(f"{where} cannot be used while {what} ({err.strerror}): check that it exists "
                                  "and is writable by the store (--data-dir)")
    return Unavailable(f"{where} failed while {what} ({err.strerror or err}); retry, and check the disk")


class _LocalWriter(BlobWriter):
    def __init__(self, final: Path, tmp_dir: Path, sha256: str, size: int):
        super().__init__(sha256, size)
        self._final = final
        self._root = tmp_dir.parent
        try:
            fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{sha256[:12]}.", suffix=".part")
        except OSError as err:
            raise translate(err, self._root, f"storing blob {sha256}") from err
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as err:
            raise translate(err, self._root, f"storing blob {self.sha256}") from err

    def _commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, self._final)
        except OSError as err:
            self.abort()
            raise translate(err, self._root, f"storing blob {self.sha256}") from err

    def abort(self) -> None:
        try:
            if not self._file.closed:
                self._file.close()
        except OSError:
            pass  # a failed flush of bytes we are discarding anyway
        self._tmp.unlink(missing_ok=True)


class LocalBlobStore(BlobStore):
    def __init__(self, root: str | os.PathLike):
        self._root = Path(root)
        self._blobs = self._root / "sha256"
        self._tmp = self._root / "tmp"

    def ensure(self) -> None:
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, sha256: str) -> Path:
        return self._blobs / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as err:
            raise translate(err, self._root, f"looking up blob {sha256}") from err

    def writer(self, sha256: str, size: int) -> BlobWriter:
        return _LocalWriter(self._path(sha256), self._tmp, sha256, size)

    def read(self, sha256: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            f = open(self._path(sha256), "rb")  # noqa: SIM115 - closed by the `with f:` below
        except FileNotFoundError:
            raise NotFound(f"blob sha256:{sha256} is missing from the blob store") from None
        except OSError as err:
            raise translate(err, self._root, f"reading blob {sha256}") from err
        with f:
            try:
                f.seek(offset)
                while chunk := f.read(chunk_size):
                    yield chunk
            except OSError as err:
                raise translate(err, self._root, f"reading blob {sha256}") from err

    def list(self) -> Iterator[BlobInfo]:
        for path in self._blobs.glob("*/*"):
            st = path.stat()
            yield BlobInfo(path.name, st.st_size, st.st_mtime)

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def abort_stale_uploads(self, older_than: float) -> int:
        count = 0
        for path in self._tmp.glob("*.part"):
            try:
                stale = path.stat().st_mtime < older_than
            except FileNotFoundError:  # committed (renamed into place) or aborted since the listing
                continue
            if stale:
                path.unlink(missing_ok=True)
                count += 1
        return count
