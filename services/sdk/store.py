"""``AdapterStore``: the store for users' code, with a verified local cache of pulled adapters.

Cache layout (``cache_dir``, default ``~/.cache/adapterfleet/adapters``), by manifest digest::

    sha256/<hex>/                  the adapter's files (adapter_config.json, adapter_model.safetensors, ...)
    sha256/<hex>.manifest.json     the manifest they were pulled with (its digest must be <hex>)
    sha256/<hex>.lock              taken while a process pulls <hex>, so concurrent pulls download once

A cache hit re-hashes every file against the manifest before it is reused; a missing or altered file means the
version is pulled again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from adapterfleet.common.errors import ChecksumMismatch, UnsafeFileName
from adapterfleet.common.security_config import ClientSecurity, PathLike, client_security
from adapterfleet.store.blob_urls import DirectFetchConfig
from adapterfleet.store.client import PushOutcome, Resolved, StoreClient, hash_file
from adapterfleet.store.events import StoreEvent
from adapterfleet.store.listing import AdapterSummary
from adapterfleet.store.manifest import BaseModelIdentity, Manifest
from adapterfleet.store.refs import DIGEST_PREFIX, Ref
from adapterfleet.store.targets import Targets, TargetsLike, coerce

try:  # POSIX advisory locks; elsewhere concurrent pulls of one key are only safe within one process
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

DEFAULT_ADDRESS = "127.0.0.1:50051"


@dataclass(frozen=True)
class LocalAdapter:
    """A pulled, verified adapter version: its directory, manifest and canonical key (``name@sha256:...``)."""

    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return str(self.manifest.key)


@dataclass(frozen=True)
class Versions:
    """Every version of one adapter name (oldest first) and its aliases (alias -> weighted targets)."""

    versions: list[Manifest]
    aliases: dict[str, Targets]


def _expectation(expect: TargetsLike | str | None) -> Targets | str | None:
    return expect if expect is None or isinstance(expect, str) else coerce(expect)


class AdapterStore:
    """A client of the adapter store. No connection is made until the first call; use as a context manager.

    ``tls_ca`` (the CA that signed the store's certificate) turns TLS on; ``tls_cert``/``tls_key`` add a client
    certificate (mTLS); ``token`` is sent as ``authorization: Bearer ...``. Or pass one ``security=ClientSecurity``."""

    def __init__(self, address: str = DEFAULT_ADDRESS, *, timeout: float | None = None,
                 cache_dir: str | os.PathLike | None = None, tls_ca: PathLike = None, tls_cert: PathLike = None,
                 tls_key: PathLike = None, token: str | None = None, security: ClientSecurity | None = None,
                 direct: DirectFetchConfig | None = None):
        self.address = address
        self.cache_dir = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache/adapterfleet/adapters"
        self.security = client_security(security, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key, token=token)
        # the underlying blocking client (grpc connects lazily)
        # ``direct``: how blobs are read by presigned URL straight from S3 (default on; the store's stream otherwise)
        self.client = StoreClient(address, timeout=timeout, security=self.security, direct=direct)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> AdapterStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- push / pull -------------------------------------------------------------------------------------------
    def push(self, directory: str | os.PathLike, name: str, *, alias: str = "", parent: str = "",
             base_model: BaseModelIdentity | None = None, sign_key: str | os.PathLike | None = None) -> PushOutcome:
        """Push a PEFT adapter directory as the next version of ``name`` (identical content: the same version).
        ``base_model`` records what it was trained on; workers whose base has another fingerprint refuse it.
        ``sign_key`` (a PEM EC private key) signs the files (OpenSSF Model Signing; ``adapterfleet[signing]``)."""
        return self.client.push_dir(directory, name, alias=alias, parent=parent, base_model=base_model,
                                    sign_key=sign_key)

    def pull(self, ref: str, dest: str | os.PathLike | None = None, *, force: bool = False) -> Path:
        """Download ``ref`` (verified) into ``dest``, or into the local cache when ``dest`` is None; the path.

        An existing ``dest`` must be empty or an earlier pull of the same adapter name, unless ``force``; only the
        adapter's own files in it are replaced (other files are kept). Nothing is written outside ``dest``."""
        return self.pull_adapter(ref, dest, force=force).path

    def pull_adapter(self, ref: str, dest: str | os.PathLike | None = None, *, force: bool = False) -> LocalAdapter:
        """Like :meth:`pull`, also returning the manifest (and so the canonical key) of what was pulled."""
        if dest is not None:
            return LocalAdapter(Path(dest), self.client.pull(ref, dest, force=force))
        parsed = Ref.parse(ref)
        manifest = self._cached_manifest(parsed) if parsed.digest else None
        if manifest is None:
            manifest = self.client.resolve(ref).manifest  # one metadata call; the pull then asks for the key
        hexdigest = manifest.digest[len(DIGEST_PREFIX):]
        directory = self._root / hexdigest
        if _intact(directory, manifest):
            return LocalAdapter(directory, manifest)
        with self._lock(hexdigest):
            if _intact(directory, manifest):  # another process pulled it while we waited
                return LocalAdapter(directory, manifest)
            pulled = self.client.pull(str(manifest.key), directory, force=True)  # the cache's own directory
            if pulled.digest != manifest.digest:
                raise ChecksumMismatch(f"asked the store for {manifest.key}, it sent {pulled.key}")
            write_atomic(self._root / f"{hexdigest}.manifest.json", pulled.to_json())
            return LocalAdapter(directory, pulled)

    @property
    def _root(self) -> Path:
        return self.cache_dir / "sha256"

    def _cached_manifest(self, ref: Ref) -> Manifest | None:
        """The cached manifest of a digest ref, if it is there, names the same adapter and hashes to the digest."""
        assert ref.digest is not None
        path = self._root / f"{ref.digest[len(DIGEST_PREFIX):]}.manifest.json"
        try:
            manifest = Manifest.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError, UnsafeFileName):
            return None
        return manifest if manifest.name == ref.name and manifest.digest == ref.digest else None

    @contextlib.contextmanager
    def _lock(self, hexdigest: str) -> Iterator[None]:
        self._root.mkdir(parents=True, exist_ok=True)
        with open(self._root / f"{hexdigest}.lock", "a+b") as f:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                if fcntl is not None:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- the rest ----------------------------------------------------------------------------------------------
    def resolve(self, ref: str, routing_key: str = "") -> Resolved:
        """The manifest and canonical key that ``ref`` names now (weighted aliases: sticky per ``routing_key``)."""
        return self.client.resolve(ref, routing_key)

    def adapters(self, prefix: str = "") -> list[AdapterSummary]:
        """Adapter names starting with ``prefix`` (e.g. ``"tenant/"``)."""
        return self.client.list_adapters(prefix)

    def versions(self, name: str) -> Versions:
        """Every version of ``name`` and its aliases."""
        versions, aliases = self.client.list_versions(name)
        return Versions(versions, aliases)

    def set_alias(self, name: str, alias: str, targets: TargetsLike, *,
                  expect: TargetsLike | str | None = "any") -> None:
        """Point ``name@alias`` at ``targets`` (a version, or ``{version: weight}`` summing to 100).

        ``expect`` is a compare-and-set guard: ``"any"`` (unconditional), ``None`` (the alias must not exist) or
        the targets it must hold now; a mismatch raises AliasConflict (FAILED_PRECONDITION)."""
        self.client.set_alias(name, alias, coerce(targets), _expectation(expect))

    def delete_alias(self, name: str, alias: str, *, expect: TargetsLike | str | None = "any") -> None:
        """Remove ``name@alias`` (same ``expect`` guard as :meth:`set_alias`)."""
        self.client.delete_alias(name, alias, _expectation(expect))

    def yank(self, name: str, version: int, *, force: bool = False) -> Manifest:
        """Stop ``name@version`` from resolving (still fetchable by digest); ``force`` if an alias points at it."""
        return self.client.yank(name, version, force=force)

    def watch(self, cursor: str = "", name: str = "") -> Iterator[StoreEvent]:
        """The store's change events after ``cursor`` (``""``: only new ones; ``"0"``: from the first), for one
        ``name`` or all. Blocks while waiting; resume later from the last event's ``cursor``."""
        return self.client.watch(cursor, name)


def _intact(directory: Path, manifest: Manifest) -> bool:
    """Does ``directory`` hold every file of ``manifest`` with the promised size and sha256?"""
    for entry in manifest.files:
        path = directory / entry.name
        try:
            if path.stat().st_size != entry.size or hash_file(path).sha256 != entry.sha256:
                return False
        except OSError:
            return False
    return True


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temp file beside it, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
