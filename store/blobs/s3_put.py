"""One blob as one streaming PutObject that starts with the first byte and completes only after verification.

Multipart uploads make parts invisible until CompleteMultipartUpload, at the cost of one more request and of the
server assembling the parts (S3-compatible servers copy them: moto spends as much CPU on the assembly as on the
upload). For a blob up to ``S3Config.single_put_max`` the store instead streams the bytes into a single PUT while
they arrive, with the blob's size as Content-Length, and holds back its last byte: the PUT cannot complete, so
nothing is visible, until ``commit`` (after every check of the push passed) releases it. ``abort`` makes the body
fail instead; the server then has a request whose body ended short and stores nothing (a failed PUT never
replaces or creates an object). The PUT also carries the sha256 (``x-amz-checksum-sha256``), so S3 itself refuses
bytes that do not hash to the digest.
"""

from __future__ import annotations

import base64
import threading
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING

from adapterfleet.store.blobs.base import BlobWriter

if TYPE_CHECKING:
    from adapterfleet.store.blobs.s3 import S3BlobStore

QUEUE_BYTES = 16 << 20  # received bytes waiting for the PUT at most; the receiver waits beyond it


class Aborted(Exception):  # raised inside the PUT's body read: the upload must not complete
    """The push was refused or failed: the held-back byte is never sent."""


class _HeldBody:
    """A file-like body fed by the receiver; ``read`` blocks for bytes and never returns the last one before
    ``release``."""

    def __init__(self, size: int):
        self.size = size
        self._chunks: deque[memoryview] = deque()
        self._queued = 0
        self._sent = 0
        self._released = False
        self._aborted = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self.size

    def feed(self, data: bytes) -> None:
        with self._cond:
            while self._queued >= QUEUE_BYTES and not self._aborted:
                self._cond.wait(1.0)
            if self._aborted:
                raise Aborted("the upload was aborted")
            self._chunks.append(memoryview(data))
            self._queued += len(data)
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._chunks.clear()
            self._cond.notify_all()

    def read(self, n: int = -1) -> bytes:
        with self._cond:
            while True:
                if self._aborted:
                    raise Aborted("the push was refused or failed: the blob's last byte is held back")
                limit = self.size - self._sent - (0 if self._released else 1)  # bytes we may hand out now
                if limit <= 0 and self._released:
                    return b""
                if self._chunks and limit > 0:
                    break
                self._cond.wait(1.0)
            want = limit if n is None or n < 0 else min(n, limit)
            out = []
            while want and self._chunks:
                head = self._chunks[0]
                take = head[:want]
                out.append(take)
                want -= len(take)
                if len(take) == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[len(take):]
            data = b"".join(out)
            self._sent += len(data)
            self._queued -= len(data)
            self._cond.notify_all()
            return data


class StreamingPutWriter(BlobWriter):
    def __init__(self, store: S3BlobStore, sha256: str, size: int):
        super().__init__(sha256, size)
        self._s3 = store
        self._body = _HeldBody(size)
        self._put: Future | None = None

    def _what(self) -> str:
        return f"storing blob {self.sha256}"

    def _start(self) -> None:
        """The PUT gets a thread of its own (it lasts as long as the push): a slow client cannot take the pool
        that other pushes' parts upload on."""
        s3, done = self._s3, Future[None]()
        checksum = base64.b64encode(bytes.fromhex(self.sha256)).decode()

        def put() -> None:
            try:
                s3.client.put_object(Bucket=s3.cfg.bucket, Key=s3.key(self.sha256), Body=self._body,
                                     ContentLength=self.size, ChecksumSHA256=checksum)
            except BaseException as err:  # noqa: BLE001 - handed to whoever waits on the result
                self._body.abort()  # a receiver waiting for room in the queue stops waiting
                done.set_exception(err)
            else:
                done.set_result(None)

        self._put = done
        threading.Thread(target=put, name=f"s3-put-{self.sha256[:8]}", daemon=True).start()

    def _write(self, data: bytes) -> None:
        if self._put is None:
            self._start()
        assert self._put is not None
        if self._put.done():  # the PUT failed early (S3 down, refused): fail the push now, not at the end
            self._result()
        try:
            self._body.feed(data)
        except Aborted:
            self._result()  # the PUT failed while we waited: its error, translated
            raise

    def _result(self) -> None:
        assert self._put is not None
        try:
            self._put.result()
        except Aborted:
            raise
        except Exception as err:  # botocore's errors, or the transport's below it: a typed error that says what to do
            self.abort()
            raise self._s3.translate(err, self._what()) from err

    def _commit(self) -> None:
        if self._put is None:  # an empty blob
            self._start()
        self._body.release()
        self._result()

    def abort(self) -> None:
        self._body.abort()
