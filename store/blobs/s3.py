"""Blobs in S3 (or any S3-wire server) through boto3, under ``<prefix>sha256/<hex>``.

Small blobs are one PutObject after their hash checked out. Large blobs stream into a multipart upload whose
parts go up concurrently while later bytes are still arriving; CompleteMultipartUpload (the moment the object
becomes visible) happens only after the whole stream hashed to the promised digest, otherwise the upload is
aborted. So nothing that is not exactly the promised bytes is ever visible under a digest key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from adapterfleet.common.errors import FailedPrecondition, NotFound, Unavailable
from adapterfleet.store.blobs.base import BlobInfo, BlobStore, BlobWriter
from adapterfleet.store.config import S3Config


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
            # Every blob is verified end to end against its sha256 (the key it is stored under), so botocore's
            # own per-request SHA-256 payload signing (on by default over plain http) and CRC32 checksums would
            # hash every byte twice more: measured at ~25% of the store's CPU during a push.
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def _translate(err: Exception, what: str) -> Exception:
    if isinstance(err, NoCredentialsError):
        return FailedPrecondition(f"no S3 credentials while {what}: pass --s3-access-key-id/--s3-secret-access-key "
                                  "or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
    if isinstance(err, EndpointConnectionError | BotoCoreError) and not isinstance(err, ClientError):
        return Unavailable(f"S3 is unreachable while {what}: {err}; check --s3-endpoint and that the server is up")
    code = err.response.get("Error", {}).get("Code", "") if isinstance(err, ClientError) else ""
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFound(f"blob missing from S3 while {what}")
    if code == "NoSuchBucket":
        return FailedPrecondition(f"S3 bucket does not exist while {what}; start the store with the right --bucket")
    return Unavailable(f"S3 error while {what}: {err}")


class _MultipartWriter(BlobWriter):
    def __init__(self, store: "S3BlobStore", sha256: str, size: int):
        super().__init__(sha256, size)
        self._s3 = store
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[Future] = []
        self._slots = threading.Semaphore(store.cfg.max_concurrency)

    def _write(self, data: bytes) -> None:
        self._buf += data
        part = self._s3.cfg.part_size
        while len(self._buf) >= part and self.received < self.size:
            self._send_part(bytes(self._buf[:part]))
            del self._buf[:part]

    def _send_part(self, body: bytes) -> None:
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
                s3.client.put_object(Bucket=s3.cfg.bucket, Key=key, Body=bytes(self._buf))
                return
            if self._buf:
                self._send_part(bytes(self._buf))
            parts = [f.result() for f in self._parts]
            s3.client.complete_multipart_upload(
                Bucket=s3.cfg.bucket, Key=key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
            )
        except (BotoCoreError, ClientError) as err:
            self.abort()
            raise _translate(err, f"storing blob {self.sha256}") from err
        finally:
            self._buf = bytearray()

    def abort(self) -> None:
        self._buf = bytearray()
        if self._upload_id is None:
            return
        for f in self._parts:
            f.cancel()
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._s3.client.abort_multipart_upload(
                Bucket=self._s3.cfg.bucket, Key=self._s3.key(self.sha256), UploadId=upload_id
            )
        except (BotoCoreError, ClientError):
            pass  # GC aborts stale uploads later


class S3BlobStore(BlobStore):
    def __init__(self, cfg: S3Config, client=None, pool: ThreadPoolExecutor | None = None):
        self.cfg = cfg
        self.client = client if client is not None else make_s3_client(cfg)
        self.pool = pool if pool is not None else ThreadPoolExecutor(max_workers=2 * cfg.max_concurrency)

    def key(self, sha256: str) -> str:
        return f"{self.cfg.prefix}sha256/{sha256}"

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (the store's `serve` does this at start-up)."""
        try:
            self.client.head_bucket(Bucket=self.cfg.bucket)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise _translate(err, f"checking bucket {self.cfg.bucket}") from err
            self.client.create_bucket(Bucket=self.cfg.bucket)
        except BotoCoreError as err:
            raise _translate(err, f"checking bucket {self.cfg.bucket}") from err

    def exists(self, sha256: str) -> bool:
        try:
            self.client.head_object(Bucket=self.cfg.bucket, Key=self.key(sha256))
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _translate(err, f"looking up blob {sha256}") from err
        except BotoCoreError as err:
            raise _translate(err, f"looking up blob {sha256}") from err

    def writer(self, sha256: str, size: int) -> BlobWriter:
        return _MultipartWriter(self, sha256, size)

    def read(self, sha256: str, offset: int = 0, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        try:
            out = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key(sha256), Range=f"bytes={offset}-")
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "InvalidRange":
                return  # offset == size: nothing left to send
            raise _translate(err, f"reading blob {sha256}") from err
        except BotoCoreError as err:
            raise _translate(err, f"reading blob {sha256}") from err
        body = out["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def list(self) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.cfg.bucket, Prefix=f"{self.cfg.prefix}sha256/"
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield BlobInfo(obj["Key"].rsplit("/", 1)[-1], obj["Size"], obj["LastModified"].timestamp())

    def delete(self, sha256: str) -> None:
        self.client.delete_object(Bucket=self.cfg.bucket, Key=self.key(sha256))

    def abort_stale_uploads(self, older_than: float) -> int:
        count = 0
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.cfg.bucket, Prefix=f"{self.cfg.prefix}sha256/"
        )
        for page in pages:
            for up in page.get("Uploads", []):
                if up["Initiated"].timestamp() < older_than:
                    self.client.abort_multipart_upload(Bucket=self.cfg.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    count += 1
        return count

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
