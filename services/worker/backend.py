"""The work behind the adapter cache: fetch and verify from the store, parse and check against the loaded base,
install into a slot, keep verified copies on local disk. Blocking; the cache calls it from worker threads.

The bytes that are parsed are the very bytes whose sha256 was checked (held in memory, never re-read between
verification and load). Parsing is safetensors only: no pickle is ever deserialised.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from adapterfleet.common.errors import ChecksumMismatch, Incompatible, InvalidAdapter, UnsafeFileName
from adapterfleet.common.signing import TrustPolicy
from adapterfleet.store.adapter_config import parse_adapter_config
from adapterfleet.store.client import StoreClient
from adapterfleet.store.filenames import CONFIG_FILE, WEIGHTS_FILE, inside
from adapterfleet.store.manifest import Manifest
from adapterfleet.store.refs import AdapterKey
from adapterfleet.store.safetensors_header import header_bytes_needed, parse_header
from adapterfleet.worker.lora import AdapterWeights, LoraModel
from adapterfleet.worker.tensor_bytes import all_finite, load_tensors

log = logging.getLogger("adapterfleet.worker.backend")
LOCKS, TMP_PREFIX = ".locks", ".tmp-"  # inside the disk-cache directory, beside the entries
META = ".manifest.json"  # inside an entry, beside the adapter's files (whose names never start with '.')
STALE_TMP_S = 3600.0  # a temporary directory this old is a save that a crash cut off


# A worker's adapters mostly share their config bytes (one recipe) and their safetensors header (one layout:
# names, dtypes, shapes, offsets): each distinct one is parsed once. Both results are frozen and only read.
_config = lru_cache(maxsize=64)(lambda data, max_rank: parse_adapter_config(data, max_rank=max_rank))
_header = lru_cache(maxsize=64)(parse_header)


def verify_files(manifest: Manifest, files: dict[str, bytes]) -> None:
    for entry in manifest.files:
        data = files.get(entry.name)
        actual = hashlib.sha256(data).hexdigest() if data is not None else "missing"
        if actual != entry.sha256 or len(data or b"") != entry.size:
            raise ChecksumMismatch(f"{manifest.key}: {entry.name} does not hash to its manifest digest "
                                   f"({actual} != {entry.sha256}); the copy is corrupt: fetch it again")


class WorkerBackend:
    def __init__(self, store: StoreClient, lora: LoraModel, *, fingerprint: str, disk_dir: str | Path,
                 dtype: torch.dtype, device: torch.device, max_rank: int = 256, trust: TrustPolicy | None = None):
        self._store = store
        self._trust = trust or TrustPolicy()
        self._lora = lora
        self._fingerprint = fingerprint
        self._disk = Path(disk_dir)
        self._dtype = dtype
        self._device = device
        self._max_rank = max_rank

    # --- fetch and parse ------------------------------------------------------------------------------------------
    def fetch(self, key: str) -> tuple[Manifest, dict[str, bytes]]:
        manifest, files = self._store.fetch(key)  # every byte checked against the manifest's sha256
        if str(manifest.key) != key:
            raise ChecksumMismatch(f"asked the store for {key} but got {manifest.key}")
        self.check_signature(manifest)
        return manifest, files

    def check_signature(self, manifest: Manifest) -> None:
        """With trusted keys: the version's signature verifies with one trusted for its tenant and covers exactly
        its files, whose sha256 are those of the bytes held (checked on arrival, or on reading the disk copy);
        SignatureRejected (FAILED_PRECONDITION) before anything is parsed, installed or saved."""
        self._trust.verify(manifest.key, manifest.signature, {e.name: e.sha256 for e in manifest.files})

    def parse(self, manifest: Manifest, files: dict[str, bytes]) -> AdapterWeights:
        """``files`` come verified from ``fetch`` or ``load_disk``; hashing them again here would only add time."""
        recorded = manifest.base_model.fingerprint
        if recorded and recorded != self._fingerprint:
            raise Incompatible(
                f"{manifest.key} was made for base model {manifest.base_model.name_or_path or '?'} with fingerprint "
                f"{recorded}, but this worker serves fingerprint {self._fingerprint}; route it to a worker with "
                "that base model")
        config, raw = bytes(files[CONFIG_FILE]), files[WEIGHTS_FILE]
        head = bytes(raw[:header_bytes_needed(raw[:8]) or 8])
        spec = _config(config, self._max_rank)
        header = _header(head, len(raw))  # bounds-checked before any read
        try:
            tensors = load_tensors(raw, header)  # views of the verified bytes (a direct read's bytearray): no copy
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
            raise InvalidAdapter(f"{manifest.key}: {WEIGHTS_FILE} cannot be read: {err}") from None
        # finite in the file and not narrowed on the way in (a float32 value can overflow float16): known finite
        widened = all(v.dtype == self._dtype or v.dtype.itemsize < self._dtype.itemsize for v in tensors.values())
        known_finite = widened and all_finite(raw, header)
        layout = (config, head, len(raw))  # names, dtypes, shapes and the config: known once for a worker
        weights = AdapterWeights.from_tensors(
            spec, {k: v if v.dtype == self._dtype else v.to(self._dtype) for k, v in tensors.items()},
            known_finite=known_finite, layout=layout)
        self._lora.check(weights, shapes=layout)  # every module exists and every shape fits: Incompatible otherwise
        return weights

    def nbytes(self, weights: AdapterWeights) -> int:
        return weights.nbytes()

    # --- slots ----------------------------------------------------------------------------------------------------
    def install(self, slot: int, weights: AdapterWeights) -> None:
        self._lora.install(slot, weights)

    def remove(self, slot: int) -> None:
        self._lora.remove(slot)
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    # --- local disk tier --------------------------------------------------------------------------------------------
    # Several workers may share one disk-cache directory (the default path is relative: two workers started from the
    # same directory do). Every entry is written into a unique temporary directory and renamed into place under an
    # flock on the entry's lock stripe, so writers, readers and removers of one entry never interleave, in one
    # process or across processes; an entry another worker already wrote is the same bytes (its name is the
    # manifest digest) and is kept.
    def _dir(self, key: str) -> Path:
        return self._disk / AdapterKey.parse(key).digest.removeprefix("sha256:")

    @contextmanager
    def _locked(self, key: str) -> Iterator[Path]:
        """Exclusive hold of ``key``'s disk entry; yields its directory."""
        target = self._dir(key)
        locks = self._disk / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{target.name[:2]}.lock", "a+b") as f:  # 256 stripes: a bounded set of lock files
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield target
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def save_disk(self, key: str, manifest: Manifest, files: dict[str, bytes]) -> int:
        size = sum(len(b) for b in files.values())
        with self._locked(key) as target:
            if target.is_dir():
                return size  # written by another worker sharing the directory, or by us before
            tmp = Path(tempfile.mkdtemp(dir=self._disk, prefix=TMP_PREFIX))
            try:
                for name, data in files.items():
                    inside(tmp, name).write_bytes(data)  # names checked on arrival; proven inside tmp again
                meta = json.dumps({"json": manifest.to_json(), "version": manifest.version})
                (tmp / META).write_text(meta)  # a dot name: never one of the adapter's files
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return size

    def load_disk(self, key: str) -> tuple[Manifest, dict[str, bytes]] | None:
        """The files as saved, re-verified (digest of the manifest and sha256 of every file), or None (the caller
        fetches them from the store then)."""
        with contextlib.ExitStack() as held:
            try:
                directory = held.enter_context(self._locked(key))
            except OSError as err:  # no lock file to be had (a read-only or full disk): the store has the bytes
                log.warning("local disk cache unusable for %s (%s); fetching it from the store", key, err)
                return None
            try:
                meta = json.loads((directory / META).read_text())
                manifest = Manifest.from_json(meta["json"], version=meta["version"])
                if str(manifest.key) != key:
                    raise ChecksumMismatch("manifest on disk does not match its key")
                files = {e.name: inside(directory, e.name).read_bytes() for e in manifest.files}
                verify_files(manifest, files)
            except (OSError, ValueError, KeyError, ChecksumMismatch, UnsafeFileName):
                shutil.rmtree(directory, ignore_errors=True)
                return None
        self.check_signature(manifest)  # the disk may be shared with a worker that trusts other keys
        return manifest, files

    def drop_disk(self, key: str) -> None:
        with self._locked(key) as directory:
            shutil.rmtree(directory, ignore_errors=True)

    def scan_disk(self, stale_tmp_s: float = STALE_TMP_S) -> list[tuple[str, int, float]]:
        """(key, bytes, modified) of each entry the directory holds, for a worker starting on a directory that an
        earlier run, or another worker sharing it, filled. A temporary directory older than ``stale_tmp_s`` is a
        save a crash cut off, and is removed. Anything else that is not an entry is left alone."""
        found: list[tuple[str, int, float]] = []
        if not self._disk.is_dir():
            return found
        now = time.time()
        for d in self._disk.iterdir():
            try:
                if d.name.startswith(TMP_PREFIX):
                    if now - d.stat().st_mtime > stale_tmp_s:
                        shutil.rmtree(d, ignore_errors=True)
                    continue
                if d.name.startswith(".") or not d.is_dir():
                    continue
                meta = json.loads((d / META).read_text())
                manifest = Manifest.from_json(meta["json"], version=meta["version"])
                if manifest.digest.removeprefix("sha256:") != d.name:
                    continue
                size = sum(f.stat().st_size for f in d.iterdir() if f.name != META)
                found.append((str(manifest.key), size, d.stat().st_mtime))
            except (OSError, ValueError, KeyError):  # gone meanwhile, or not an entry: a load verifies anyway
                continue
        return found
