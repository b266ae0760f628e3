"""Blobs in S3 (or any S3-wire server) through boto3, under ``<prefix>sha256/<hex>``.

Small blobs (under ``part_size``) are one PutObject after their hash checked out. Blobs up to ``single_put_max``
stream into one PutObject whose last byte is held back until the push is verified (``s3_put.py``). Larger blobs
stream into a multipart upload whose parts go up concurrently while later bytes are still arriving;
CompleteMultipartUpload (the moment the object becomes visible) happens only after the whole stream hashed to the
promised digest, otherwise the upload is aborted. So nothing that is not exactly the promised bytes is ever visible
under a digest key.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import boto3
import urllib3.exceptions
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)

from adapterfleet.common.errors import (
    AdapterFleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from adapterfleet.store.blobs.base import BlobInfo, BlobStore, BlobWriter
from adapterfleet.store.blobs.s3_put import StreamingPutWriter
from adapterfleet.store.config import S3Config
from adapterfleet.store.lru import Lru

PRESIGNED_KEPT = 4096  # URLs kept for reuse (one per blob)
log = logging.getLogger("adapterfleet.store.s3")
CONNECT_TIMEOUT_S = 5.0  # a dead endpoint fails in seconds (botocore's default waits 60 s per attempt)
READ_TIMEOUT_S = 60.0

# --- bucket names ---------------------------------------------------------------------------------------------------

_BUCKET_RULE = ("S3 bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', start and end with a "
                "letter or digit, have no '..', and are not IP addresses "
                "(https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html)")
_BUCKET_RE = re.compile(r"\A[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def validate_bucket_name(name: str) -> str:
    """Return ``name`` if S3 accepts it as a bucket name, else raise InvalidArgument saying which rule it breaks."""
    if not isinstance(name, str):
        raise InvalidArgument(f"invalid S3 bucket name: expected a string, got {type(name).__name__}; {_BUCKET_RULE}")
    shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}... ({len(name)} characters)"
    if not 3 <= len(name) <= 63:
        why = f"it is {len(name)} character{'s' if len(name) != 1 else ''} long"
    elif not _BUCKET_RE.match(name):
        bad = sorted({c for c in name if c not in "abcdefghijklmnopqrstuvwxyz0123456789.-"})
        why = (f"it has characters S3 does not allow ({''.join(bad)[:20]!r})" if bad
               else "it does not start and end with a letter or digit")
    elif ".." in name:
        why = "it has two adjacent periods"
    elif _is_ip(name):
        why = "it is formatted as an IP address"
    elif name.startswith(_RESERVED_PREFIXES) or name.endswith(_RESERVED_SUFFIXES):
        why = "it uses a prefix or suffix that S3 reserves"
    else:
        return name
    raise InvalidArgument(f"invalid S3 bucket name {shown}: {why}; {_BUCKET_RULE}")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.IPv4Address(name)
        return True
    except ValueError:
        return False


# --- errors ---------------------------------------------------------------------------------------------------------

_MISSING_KEY = frozenset({"NoSuchKey", "404", "NotFound"})
_MISSING_BUCKET = frozenset({"NoSuchBucket"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "InvalidAccessKeyId",
                     "SignatureDoesNotMatch", "AccountProblem", "InvalidToken", "ExpiredToken", "InvalidSecurity"})
_TRANSIENT = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                        "RequestThrottled", "RequestTimeout", "ServiceUnavailable", "InternalError",
                        "OperationAborted"})
# what a streamed body can raise below botocore (urllib3 and sockets), besides botocore's own errors
_STREAM_ERRORS = (BotoCoreError, ClientError, urllib3.exceptions.HTTPError, OSError)


def _short(err: Exception, limit: int = 300) -> str:
    s = str(err)
    return s if len(s) <= limit else s[:limit] + "..."


def translate(err: Exception, cfg: S3Config, what: str) -> AdapterFleetError:
    """A boto/botocore/transport error as the domain error that says what to do: UNAVAILABLE for an unreachable
    or overloaded S3 (retry later), FAILED_PRECONDITION for a missing bucket or missing credentials (fix the
    configuration), PERMISSION_DENIED when S3 refuses the credentials, NOT_FOUND for a missing blob."""
    if isinstance(err, AdapterFleetError):
        return err
    endpoint = cfg.endpoint_url or f"AWS S3 ({cfg.region})"
    where = f"S3 at {endpoint}, bucket {cfg.bucket!r},"
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return FailedPrecondition(f"no S3 credentials for {where} while {what}: pass --s3-access-key-id/"
                                  "--s3-secret-access-key or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(err, ParamValidationError):
        return FailedPrecondition(f"{where} cannot be asked while {what}: {_short(err)}; check --bucket")
    if not isinstance(err, ClientError):  # connection refused, timeouts, broken streams: the service is not there
        return Unavailable(f"{where} is unreachable while {what} ({type(err).__name__}: {_short(err)}); check "
                           "--s3-endpoint and that the server is up, then retry")
    error = err.response.get("Error", {}) or {}
    code = str(error.get("Code", ""))
    status = int((err.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
    detail = f"{code or status}: {_short(error.get('Message') or err)}"
    if code in _MISSING_BUCKET:
        return FailedPrecondition(f"bucket {cfg.bucket!r} does not exist at {endpoint} (while {what}): create it "
                                  "or fix --bucket")
    if code in _MISSING_KEY:
        return NotFound(f"blob missing from bucket {cfg.bucket!r} at {endpoint} while {what}")
    if code in _DENIED or status == 403:
        return PermissionDenied(f"{where} denied access while {what} ({detail}); check the credentials and the "
                                "bucket policy")
    if code in _TRANSIENT or status >= 500 or status == 429:
        return Unavailable(f"{where} is unavailable or throttling while {what} ({detail}); retry later")
    return FailedPrecondition(f"{where} refused a request while {what} ({detail}); check the S3 configuration")


def make_s3_client(cfg: S3Config):
    return boto3.client(
        "s3",
        endpoint_url=cfg.endpoint_url,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id,
        aws_secret_access_key=cfg.secret_access_key,
        config=BotoConfig(
            max_pool_connections=max(10, 2 * cfg.max_concurrency),
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            # Every blob is verified end to end against its sha256 (the key it is stored under), so botocore's
            # own per-request SHA-256 payload signing (on by default over plain http) and CRC32 checksums would
            # hash every byte twice more: measured at ~25% of the store's CPU during a push.
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def make_presign_client(cfg: S3Config):
    """A client only for presigning (no request is ever sent through it): SigV4, and the endpoint as clients
    reach it, which may differ from the store's own (a public name in front of an internal one)."""
    return boto3.client(
        "s3",
        endpoint_url=cfg.presign_endpoint_url or cfg.endpoint_url,
        region_name=cfg.region,
        aws_access_key_id=cfg.access_key_id,
        aws_secret_access_key=cfg.secret_access_key,
        config=BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


class _MultipartWriter(BlobWriter):
    def __init__(self, store: S3BlobStore, sha256: str, size: int):
        super().__init__(sha256, size)
        self._s3 = store
        self._chunks: list[bytes | memoryview] = []  # received, not yet sent; joined once per part (one copy)
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._slots = threading.Semaphore(store.cfg.max_concurrency)

    def _what(self) -> str:
        return f"storing blob {self.sha256}"

    def _write(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        part = self._s3.cfg.part_size
        try:
            while self._buffered >= part and self.received < self.size:
                self._send_part(self._take(part))
        except (BotoCoreError, ClientError) as err:
            raise self._s3.translate(err, self._what()) from err

    def _take(self, n: int) -> bytes:
        """The first ``n`` buffered bytes (all of them when n < 0), copied once into one body."""
        if n < 0 or n >= self._buffered:
            taken, self._chunks, self._buffered = self._chunks, [], 0
            return b"".join(taken)
        taken, need = [], n
        while need:
            chunk = self._chunks[0]
            if len(chunk) <= need:
                taken.append(self._chunks.pop(0))
                need -= len(chunk)
            else:
                view = memoryview(chunk)
                taken.append(view[:need])
                self._chunks[0] = view[need:]
                need = 0
        self._buffered -= n
        return b"".join(taken)

    def _send_part(self, body: bytes) -> None:
        for f in self._parts:  # a part that already failed fails the upload now, not at the end
            if f.done() and f.exception() is not None:
                f.result()
        s3, key = self._s3, self._s3.key(self.sha256)
        if self._upload_id is None:
            self._upload_id = s3.client.create_multipart_upload(Bucket=s3.cfg.bucket, Key=key)["UploadId"]
        number = len(self._parts) + 1
        self._slots.acquire()  # bounds memory: at most max_concurrency parts in flight

        def upload() -> dict:
            try:
                out = s3.client.upload_part(
                    Bucket=s3.cfg.bucket, Key=key, UploadId=self._upload_id, PartNumber=number, Body=body
                )
                return {"PartNumber": number, "ETag": out["ETag"]}
            finally:
                self._slots.release()

        self._parts.append(s3.pool.submit(upload))

    def _commit(self) -> None:
        s3, key = self._s3, self._s3.key(self.sha256)
        try:
            if self._upload_id is None:
                s3.client.put_object(Bucket=s3.cfg.bucket, Key=key, Body=self._take(-1))
                return
            if self._buffered:
                self._send_part(self._take(-1))
            parts = [f.result() for f in self._parts]
            s3.client.complete_multipart_upload(
                Bucket=s3.cfg.bucket, Key=key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
            )
        except (BotoCoreError, ClientError) as err:
            self.abort()
            raise s3.translate(err, self._what()) from err
        finally:
            self._chunks, self._buffered = [], 0

    def abort(self) -> None:
        self._chunks, self._buffered = [], 0
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        upload_id, self._upload_id = self._upload_id, None
        with contextlib.suppress(BotoCoreError, ClientError):  # GC aborts stale uploads later
            self._s3.client.abort_multipart_upload(
                Bucket=self._s3.cfg.bucket, Key=self._s3.key(self.sha256), UploadId=upload_id
            )


class S3BlobStore(BlobStore):
    """Every S3 failure leaves here as a typed error (see :func:`translate`), never as a botocore exception."""

    def __init__(self, cfg: S3Config, client=None, pool: ThreadPoolExecutor | None = None):
        self.cfg = cfg
        self.client = client if client is not None else make_s3_client(cfg)
        self.pool = pool if pool is not None else ThreadPoolExecutor(max_workers=2 * cfg.max_concurrency)
        self._presigner: Any = None  # a boto3 client, made on first use (presigning off: never)
        self._presign_lock = threading.Lock()
        self._presigned: Lru[tuple[str, float]] = Lru(PRESIGNED_KEPT)  # sha256 -> (url, signed at)

    def key(self, sha256: str) -> str:
        return f"{self.cfg.prefix}sha256/{sha256}"

    def translate(self, err: Exception, what: str) -> AdapterFleetError:
        return translate(err, self.cfg, what)

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (the store's `serve` does this at start-up)."""
        validate_bucket_name(self.cfg.bucket)
        what = f"checking bucket {self.cfg.bucket!r} at start-up"
        try:
            try:
                self.client.head_bucket(Bucket=self.cfg.bucket)
            except ClientError as err:
                if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                    raise
                what = f"creating bucket {self.cfg.bucket!r}"
                self.client.create_bucket(Bucket=self.cfg.bucket)
        except (BotoCoreError, ClientError) as err:
            raise self.translate(err, what) from err

    def exists(self, sha256: str) -> bool:
        return self.size(sha256) is not None

    def size(self, sha256: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.cfg.bucket, Key=self.key(sha256))["ContentLength"])
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.translate(err, f"looking up blob {sha256}") from err
        except BotoCoreError as err:
            raise self.translate(err, f"looking up blob {sha256}") from err

    def writer(self, sha256: str, size: int) -> BlobWriter:
        if self.cfg.part_size <= size <= self.cfg.single_put_max:
            return StreamingPutWriter(self, sha256, size)  # one PUT, streamed, completed after verification
        return _MultipartWriter(self, sha256, size)  # small: one PutObject after verification; huge: multipart

    def read(self, sha256: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        what = f"reading blob {sha256}"
        try:
            out = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key(sha256), Range=f"bytes={offset}-")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # offset == size: nothing left to send
            raise self.translate(err, what) from err
        except BotoCoreError as err:
            raise self.translate(err, what) from err
        body = out["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        except _STREAM_ERRORS as err:  # the connection broke mid-stream
            raise self.translate(err, what) from err
        finally:
            body.close()

    def list(self) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.cfg.bucket, Prefix=f"{self.cfg.prefix}sha256/"
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    yield BlobInfo(obj["Key"].rsplit("/", 1)[-1], obj["Size"], obj["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as err:
            raise self.translate(err, "listing blobs") from err

    def delete(self, sha256: str) -> None:
        self._presigned.pop(sha256)
        try:
            self.client.delete_object(Bucket=self.cfg.bucket, Key=self.key(sha256))
        except (BotoCoreError, ClientError) as err:
            raise self.translate(err, f"deleting blob {sha256}") from err

    def abort_stale_uploads(self, older_than: float) -> int:
        count = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.cfg.bucket, Prefix=f"{self.cfg.prefix}sha256/"
        )
        try:
            for page in pages:
                for up in page.get("Uploads", []):
                    if up["Initiated"].timestamp() < older_than:
                        self.client.abort_multipart_upload(Bucket=self.cfg.bucket, Key=up["Key"],
                                                           UploadId=up["UploadId"])
                        count += 1
        except (BotoCoreError, ClientError) as err:
            raise self.translate(err, "aborting stale uploads") from err
        return count

    def presign(self, sha256: str) -> tuple[str, float] | None:
        """A GET URL for the blob and the seconds it stays valid. A URL signed for an earlier answer is handed out
        again while it has at least half its lifetime left (the seconds left are given): signing takes ~0.25 ms
        of every cold load's Resolve, and a URL grants nothing another one would not (the caller's access to the
        version is checked before any URL is given, and quarantined blobs get none)."""
        expiry = self.cfg.presign_expiry_s
        if expiry <= 0:
            return None
        seconds = max(1, int(expiry))
        now = time.monotonic()
        kept = self._presigned.get(sha256)
        if kept is not None and now - kept[1] < seconds / 2:
            return kept[0], seconds - (now - kept[1])
        with self._presign_lock:
            if self._presigner is None:
                self._presigner = make_presign_client(self.cfg)
            presigner = self._presigner
        try:
            url = presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.cfg.bucket, "Key": self.key(sha256)}, ExpiresIn=seconds)
        except (BotoCoreError, ClientError) as err:  # e.g. no credentials to sign with: stream through the store
            log.warning("cannot presign S3 URLs (%s); blobs stream through the store", _short(err))
            return None
        self._presigned.put(sha256, (url, now))
        return url, float(seconds)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
