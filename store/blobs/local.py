"""Blobs in a local directory: the embedded default. Atomic by write-to-temp + rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from adapterfleet.common.errors import NotFound
from adapterfleet.store.blobs.base import BlobInfo, BlobStore, BlobWriter


class _LocalWriter(BlobWriter):
    def __init__(self, final: Path, tmp_dir: Path, sha256: str, size: int):
        super().__init__(sha256, size)
        self._final = final
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix=f"{sha256[:12]}.", suffix=".part")
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def _write(self, data: bytes) -> None:
        self._file.write(data)

    def _commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._tmp, self._final)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
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

    def writer(self, sha256: str, size: int) -> BlobWriter:
        return _LocalWriter(self._path(sha256), self._tmp, sha256, size)

    def read(self, sha256: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            f = open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise NotFound(f"blob sha256:{sha256} is missing from the blob store") from None
        with f:
            f.seek(offset)
            while chunk := f.read(chunk_size):
                yield chunk

    def list(self) -> Iterator[BlobInfo]:
        for path in self._blobs.glob("*/*"):
            st = path.stat()
            yield BlobInfo(path.name, st.st_size, st.st_mtime)

    def delete(self, sha256: str) -> None:
        self._path(sha256).unlink(missing_ok=True)

    def abort_stale_uploads(self, older_than: float) -> int:
        count = 0
        for path in self._tmp.glob("*.part"):
            if path.stat().st_mtime < older_than:
                path.unlink(missing_ok=True)
                count += 1
        return count
