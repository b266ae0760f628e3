"""Blob bytes straight from object storage: GET a presigned URL, hash every byte as it arrives, hand over only bytes
that hash to the manifest's sha256.

The store stays the authority on what the bytes must hash to (the manifest); S3 only carries them. Any way a URL
can fail to deliver (expired before it was used, refused, unreachable, cut short) is :class:`DirectUnavailable`,
and the caller fetches that file through the store's stream instead. Bytes that arrive whole but hash to something
else (or an object of another size) are :class:`ChecksumMismatch` (DATA_LOSS): the blob in S3 is not what the
manifest promises, and fetching it through the store would read the same object.

Plain HTTP(S) through the standard library (``http.client``): the base install stays light and a worker needs no
S3 credentials, only the URL. Large files are fetched as parallel ranged GETs (``part_bytes`` each, ``streams`` at a
time) into their place in one buffer, and hashed in order while later parts are still arriving, or as one GET where
that was measured to be faster for their endpoint (``range_choice.py``). Idle keep-alive
connections are reused per host.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import queue
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

from adapterfleet.common.errors import ChecksumMismatch
from adapterfleet.store.blob_urls import BlobUrl, DirectFetchConfig
from adapterfleet.store.manifest import FileEntry, Manifest
from adapterfleet.store.range_choice import RangeChoice
from adapterfleet.store.small_blobs import SmallBlobs

log = logging.getLogger("adapterfleet.store.direct")
READ_BLOCK = 256 << 10  # bytes per readinto / hash step (after its last byte a GET waits for one block's hash)
HASH_THREAD_BYTES = 8 << 20  # a single GET at least this large is hashed by a thread of its own, beside the reader
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)\Z")
Progress = Callable[[int], None]


class DirectUnavailable(Exception):
    """The URL could not deliver the file (expired, refused, unreachable, cut short): fetch it through the store."""


class _Unreachable(DirectUnavailable):
    """The endpoint itself could not be reached: later URLs to it go through the store for a while."""


def _redact(url: str) -> str:
    """The URL without its query (the signature), for messages."""
    return url.split("?", 1)[0]


class _Buffer:
    """One file's bytes, made by the first GET to have sent its request (ranged GETs share it). Zero-filling a fresh
    100 MB bytearray costs ~40 ms of page faults on the 2-core VM; made while the server prepares its answer, that
    overlaps the server's work instead of delaying the request."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._bytes: bytearray | None = None

    def view(self) -> memoryview:
        with self._lock:
            if self._bytes is None:
                self._bytes = bytearray(self.size)
            return memoryview(self._bytes)

    def data(self) -> bytearray:
        self.view()  # a file of 0 bytes sends no request
        assert self._bytes is not None
        return self._bytes


class DirectFetcher:
    """Downloads blobs by presigned URL. Threads and connections start on first use; ``close`` ends them."""

    def __init__(self, cfg: DirectFetchConfig | None = None, *, clock: Callable[[], float] = time.monotonic):
        self.cfg = cfg or DirectFetchConfig()
        self.clock = clock
        self._idle: dict[tuple[str, str, int], list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None  # ranged GETs of a large file
        self._files: ThreadPoolExecutor | None = None  # a version's other files, beside its largest
        self._ssl: ssl.SSLContext | None = None
        self._down_until: dict[str, float] = {}  # netloc -> client-clock time to try it again
        self._small = SmallBlobs(self.cfg.small_blob_bytes, self.cfg.small_cache_bytes)
        self.ranges = RangeChoice()  # per endpoint: large files in ranges or in one GET, whichever was faster
        # files delivered without the store (by URL, or "cached": a small file verified before); files left to it
        self.stats = {"files": 0, "cached": 0, "bytes": 0, "fallbacks": 0}

    # --- a version's files ----------------------------------------------------------------------------------------
    def fetch_files(self, manifest: Manifest, urls: Sequence[BlobUrl], received_at: float,
                    hand_over: Callable[[str, bytearray], object], progress: Progress | None = None, *,
                    on_corrupt: Callable[[str], object] | None = None) -> set[str]:
        """Download every file of ``manifest`` that has a URL, the largest in this thread and the others (the
        config, a README) beside it; each is handed over whole, in manifest order, once all hashed right. Small
        files this fetcher verified before (same sha256) are taken from its memory instead of GET again. Returns
        the names delivered; the rest are the caller's to fetch through the store. Raises ChecksumMismatch for
        bytes that are not the manifest's (after ``on_corrupt(sha256)``)."""
        by_name = {u.file: u for u in urls}
        got: dict[str, bytearray] = {}
        todo: list[tuple[FileEntry, BlobUrl]] = []
        for entry in manifest.files:
            if entry.name not in by_name:
                continue
            kept = self._small.get(entry)
            if kept is not None:
                got[entry.name] = kept
            else:
                todo.append((entry, by_name[entry.name]))
        hosts = {urlsplit(u.url).netloc for _, u in todo}
        if any(self.clock() < self._down_until.get(h, float("-inf")) for h in hosts):
            todo = []
        failed: list[DirectUnavailable] = []
        if todo:
            got.update(self._get_files(manifest, todo, received_at, progress, on_corrupt, failed))
        for failure in failed:
            if isinstance(failure, _Unreachable):
                for h in hosts:
                    self._down_until[h] = self.clock() + self.cfg.unreachable_backoff_s
        if failed:
            log.info("reading %s through the store: %s", manifest.key, failed[0])
        for entry in manifest.files:
            if entry.name in got:
                self._small.put(entry, got[entry.name])
                if progress and not any(e is entry for e, _ in todo):
                    progress(entry.size)  # from memory: no bytes moved, but the file is done
                hand_over(entry.name, got[entry.name])
        self.stats["files"] += len(got)
        self.stats["cached"] += len(got) - sum(e.name in got for e, _ in todo)
        self.stats["bytes"] += sum(len(b) for b in got.values())
        self.stats["fallbacks"] += len(manifest.files) - len(got)
        return set(got)

    def _get_files(self, manifest: Manifest, todo: list[tuple[FileEntry, BlobUrl]], received_at: float,
                   progress: Progress | None, on_corrupt: Callable[[str], object] | None,
                   failed: list[DirectUnavailable]) -> dict[str, bytearray]:
        """GET ``todo``: the largest file here, the others in the pool meanwhile. Failures to deliver go to
        ``failed``; bytes that are not the manifest's raise ChecksumMismatch."""
        largest = max(todo, key=lambda item: item[0].size)
        side = [item for item in todo if item is not largest]
        pool = self._file_threads() if side else None

        def one(entry: FileEntry, url: BlobUrl, report: Progress | None) -> bytearray:
            try:
                return self.fetch(url.url, entry.size, entry.sha256, deadline=self.deadline(url, received_at),
                                  progress=report, what=f"{manifest.key}: {entry.name}")
            except ChecksumMismatch:
                if on_corrupt is not None:
                    on_corrupt(entry.sha256)  # the store re-reads the object and quarantines it if it is bad
                raise

        futures = {e.name: pool.submit(one, e, u, None) for e, u in side} if pool is not None else {}
        got: dict[str, bytearray] = {}
        try:
            got[largest[0].name] = one(*largest, progress)
        except DirectUnavailable as err:
            failed.append(err)
        for entry, _ in side:
            try:
                got[entry.name] = futures[entry.name].result()
            except DirectUnavailable as err:
                failed.append(err)
            else:
                if progress:
                    progress(entry.size)
        return got

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
            pools, self._pool, self._files = (self._pool, self._files), None, None
        for conns in idle.values():
            for c in conns:
                c.close()
        for pool in pools:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> DirectFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def deadline(self, url: BlobUrl, received_at: float) -> float:
        """The client-clock time after which ``url`` is not started (its expiry less the margin)."""
        return received_at + url.expires_in_s - self.cfg.expiry_margin_s

    # --- one blob -------------------------------------------------------------------------------------------------
    def fetch(self, url: str, size: int, sha256: str, *, deadline: float, progress: Progress | None = None,
              what: str = "blob") -> bytearray:
        """Download one blob into memory and check it. Raises DirectUnavailable (fall back to the store) or
        ChecksumMismatch (the bytes are not the manifest's)."""
        digest = hashlib.sha256()
        buf = _Buffer(size)
        part = max(READ_BLOCK, self.cfg.part_bytes)
        large = size >= max(self.cfg.parallel_min_bytes, 2 * part) and self.cfg.streams > 1
        endpoint = urlsplit(url).netloc
        ranged = large and (not self.cfg.measure_ranges or self.ranges.ranged(endpoint))
        started = time.perf_counter()
        if ranged:
            self._parallel(url, size, part, deadline, digest, buf, progress, what)
        else:
            self._single(url, size, deadline, digest, buf, progress, what)
        if large and self.cfg.measure_ranges:
            self.ranges.record(endpoint, ranged, size, time.perf_counter() - started)
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumMismatch(
                f"{what} from {_redact(url)} hashes to sha256 {actual}, but the manifest says {sha256}; the object "
                "in S3 is not the bytes that were pushed: nothing was kept; re-push the adapter from a good copy")
        return buf.data()

    def _single(self, url, size, deadline, digest, buf, progress, what) -> None:
        """One GET; each block is hashed as soon as it landed, while the next is still arriving. A large file is
        hashed by a second thread that follows the reader (sha256 releases the GIL), so reading never waits for
        hashing."""
        if size == 0:
            return
        if size < HASH_THREAD_BYTES:
            def landed(chunk: memoryview) -> None:
                digest.update(chunk)
                if progress:
                    progress(len(chunk))

            self._get(url, 0, size, size, deadline, buf, landed, what, ranged=False)
            return
        blocks: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()

        def hasher() -> None:
            while (chunk := blocks.get()) is not None:
                digest.update(chunk)
                if progress:
                    progress(len(chunk))

        worker = threading.Thread(target=hasher, name="direct-fetch-hash", daemon=True)
        worker.start()
        try:
            self._get(url, 0, size, size, deadline, buf, blocks.put, what, ranged=False)
        finally:
            blocks.put(None)
            worker.join()

    def _parallel(self, url, size, part, deadline, digest, buf, progress, what) -> None:
        """Ranged GETs, ``streams`` in flight, each into its place in ``buf``; hashed in order as they complete."""
        ranges = [(start, min(start + part, size)) for start in range(0, size, part)]
        pool = self._threads()
        window = max(1, self.cfg.streams)
        futures: list[Future] = []

        def get(start: int, end: int) -> memoryview:
            self._get(url, start, end, size, deadline, buf, None, what, ranged=True)
            return buf.view()[start:end]

        try:
            for i, (start, end) in enumerate(ranges):
                if i < window:
                    futures.append(pool.submit(get, start, end))
            for i in range(len(ranges)):
                chunk = futures[i].result()  # parts are hashed in order while later ones arrive
                if i + window < len(ranges):
                    futures.append(pool.submit(get, *ranges[i + window]))
                digest.update(chunk)
                if progress:
                    progress(len(chunk))
        finally:
            for f in futures:  # after a failure: parts not started yet are dropped
                f.cancel()

    # --- one GET ------------------------------------------------------------------------------------------------
    def _get(self, url: str, start: int, end: int, total: int, deadline: float,
             buf: _Buffer, landed: Callable[[memoryview], None] | None, what: str, *, ranged: bool) -> None:
        """GET bytes [start, end) of an object of ``total`` bytes into their place in ``buf``; each block read is then
        passed to ``landed``. The buffer is made once the request is out, while the server prepares its answer."""
        shown = _redact(url)
        if self.clock() >= deadline:
            raise DirectUnavailable(f"the URL for {what} expired before it was used")
        parts = urlsplit(url)
        headers = {"Range": f"bytes={start}-{end - 1}"} if ranged else {}
        path = f"{parts.path}?{parts.query}" if parts.query else parts.path or "/"
        for fresh in (False, True):  # a kept-alive connection the server has closed since gets one retry
            conn, reused = self._connection(parts.scheme, parts.hostname or "", parts.port, fresh=fresh)
            try:
                conn.request("GET", path, headers=headers)
                view = buf.view()
                resp = conn.getresponse()
                break
            except (OSError, http.client.HTTPException) as err:
                conn.close()
                if not reused:
                    raise DirectUnavailable(f"{shown} unreachable for {what} ({type(err).__name__}: {err})") from None
        try:
            if resp.status not in (200, 206):
                raise DirectUnavailable(f"{shown} answered HTTP {resp.status} {resp.reason} for {what}")
            self._check_length(resp, start, end, total, shown, what)
            offset = start
            while offset < end:
                n = min(READ_BLOCK, end - offset)
                target = view[offset:offset + n]
                got = resp.readinto(target)
                if not got:
                    raise DirectUnavailable(f"{shown} ended {end - offset} bytes early for {what}")
                if landed is not None:
                    landed(target[:got])
                offset += got
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise DirectUnavailable(f"{shown} broke off for {what} ({type(err).__name__}: {err})") from None
        except BaseException:
            conn.close()
            raise
        if resp.will_close or not resp.isclosed():
            conn.close()
        else:
            self._release(parts.scheme, parts.hostname or "", parts.port, conn)

    @staticmethod
    def _check_length(resp: http.client.HTTPResponse, start: int, end: int, total: int, shown: str,
                      what: str) -> None:
        if resp.status == 206:
            m = _CONTENT_RANGE.match(resp.getheader("Content-Range") or "")
            if m is None:
                raise DirectUnavailable(f"{shown} sent a partial answer without a usable Content-Range for {what}")
            first, last, size = (int(g) for g in m.groups())
            if size != total:
                raise ChecksumMismatch(f"{what} at {shown} is {size} bytes, but the manifest says {total}; the object "
                                       "in S3 is not the bytes that were pushed: re-push the adapter")
            if (first, last + 1) != (start, end):
                raise DirectUnavailable(f"{shown} sent bytes {first}-{last} when {start}-{end - 1} were asked")
            return
        length = resp.getheader("Content-Length")
        if start != 0 or end != total:
            raise DirectUnavailable(f"{shown} ignored the Range header for {what}")
        if length is not None and int(length) != total:
            raise ChecksumMismatch(f"{what} at {shown} is {length} bytes, but the manifest says {total}; the object "
                                   "in S3 is not the bytes that were pushed: re-push the adapter")

    # --- connections and threads ------------------------------------------------------------------------------------
    def _connection(self, scheme: str, host: str, port: int | None, *,
                    fresh: bool = False) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to the host: an idle kept-alive one (True) unless ``fresh``, else a new one (False)."""
        if not fresh:
            with self._lock:
                idle = self._idle.get((scheme, host, port or 0))
                if idle:
                    return idle.pop(), True
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(host, port, timeout=self.cfg.connect_timeout_s,
                                               context=self._context())
        elif scheme == "http":
            conn = http.client.HTTPConnection(host, port, timeout=self.cfg.connect_timeout_s)
        else:
            raise DirectUnavailable(f"cannot GET a {scheme or '(no scheme)'} URL")
        try:  # connect with the short timeout, then read with the long one
            conn.connect()
            conn.sock.settimeout(self.cfg.read_timeout_s)
        except (OSError, http.client.HTTPException) as err:
            conn.close()
            raise _Unreachable(f"{scheme}://{host}:{port} unreachable ({type(err).__name__}: {err})") from None
        return conn, False

    def _release(self, scheme: str, host: str, port: int | None, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault((scheme, host, port or 0), [])
            if len(idle) < 2 * max(1, self.cfg.streams):
                idle.append(conn)
                return
        conn.close()

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=self.cfg.ca_file)
        return self._ssl

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max(1, self.cfg.streams), thread_name_prefix="direct-fetch")
            return self._pool

    def _file_threads(self) -> ThreadPoolExecutor:
        """Not the ranged GETs' pool: a file fetched there in ranged parts would wait on parts queued behind it,
        and with ``streams`` such files at once every thread would wait for ever."""
        with self._lock:
            if self._files is None:
                self._files = ThreadPoolExecutor(4, thread_name_prefix="direct-fetch-file")
            return self._files
