"""The local blob store on a bad day: its directory removed or replaced under it. Failures are typed, never a bare
OSError (which would reach callers as INTERNAL)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from adapterfleet.common.errors import FailedPrecondition, NotFound
from adapterfleet.store.blobs.local import LocalBlobStore

DATA = b"adapter bytes"
SHA = hashlib.sha256(DATA).hexdigest()


def stored(tmp_path) -> LocalBlobStore:
    blobs = LocalBlobStore(tmp_path / "blobs")
    blobs.ensure()
    writer = blobs.writer(SHA, len(DATA))
    writer.write(DATA)
    writer.commit()
    return blobs


def test_data_dir_removed_under_the_store_is_failed_precondition(tmp_path):
    blobs = stored(tmp_path)
    shutil.rmtree(tmp_path / "blobs")
    with pytest.raises(FailedPrecondition) as err:
        blobs.writer(SHA, len(DATA))
    assert "blob directory" in err.value.message and "--data-dir" in err.value.message
    with pytest.raises(NotFound):
        list(blobs.read(SHA))


def test_blob_path_that_is_not_a_file_is_failed_precondition(tmp_path):
    blobs = stored(tmp_path)
    shard = tmp_path / "blobs" / "sha256" / SHA[:2]
    shutil.rmtree(shard)
    shard.write_bytes(b"not a directory")  # reads now hit ENOTDIR, writes cannot create the shard
    with pytest.raises(FailedPrecondition):
        list(blobs.read(SHA))
    with pytest.raises(FailedPrecondition):
        blobs.size(SHA)
    writer = blobs.writer(SHA, len(DATA))
    writer.write(DATA)
    with pytest.raises(FailedPrecondition):
        writer.commit()
    assert not list((tmp_path / "blobs" / "tmp").glob("*.part"))  # the failed write left nothing behind


def test_size_of_a_stored_and_of_a_missing_blob(tmp_path):
    blobs = stored(tmp_path)
    assert blobs.size(SHA) == len(DATA) and blobs.exists(SHA)
    assert blobs.size("0" * 64) is None and not blobs.exists("0" * 64)


def test_stale_upload_sweep_skips_a_part_file_that_vanished_since_the_listing(tmp_path, monkeypatch):
    """A push commits (renames) its .part while garbage collection lists them: the sweep goes on, not INTERNAL."""
    import os
    from pathlib import Path

    blobs = stored(tmp_path)
    tmp = tmp_path / "blobs" / "tmp"
    stale = tmp / "old.part"
    stale.write_bytes(b"half")
    os.utime(stale, (1_000_000, 1_000_000))
    real_glob = Path.glob

    def glob(self, pattern):
        listed = list(real_glob(self, pattern))
        return [*listed, tmp / "committed-meanwhile.part"] if self == tmp else listed

    monkeypatch.setattr(Path, "glob", glob)
    assert blobs.abort_stale_uploads(older_than=2_000_000) == 1 and not stale.exists()
