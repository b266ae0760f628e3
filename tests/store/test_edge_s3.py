"""S3 on a bad day, against real servers: a deleted bucket, a stopped endpoint, refused credentials, throttling.
Every failure reaches the caller typed (FAILED_PRECONDITION, UNAVAILABLE, PERMISSION_DENIED), naming the endpoint
and the bucket, never INTERNAL; and the store keeps serving what does not need S3."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import grpc
import pytest
from botocore.config import Config as BotoConfig

from adapterfleet.common.embedded_redis import free_port
from adapterfleet.common.errors import (
    AdapterFleetError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from adapterfleet.store.blobs.s3 import S3BlobStore, make_s3_client, validate_bucket_name
from adapterfleet.store.config import S3Config, StoreConfig
from adapterfleet.store.server import make_blob_store
from adapterfleet.v1 import common_pb2, store_pb2, store_pb2_grpc
from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter

SHA = "0" * 64


# ---- real servers of our own: a moto instance we may stop, a scripted S3 endpoint ----------------------------------


class Moto:
    """A moto S3 server in its own process, apart from the session's, so a test may stop it."""

    def __init__(self, **env: str):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", **env})
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto did not listen on {self.port}") from None
                time.sleep(0.05)

    def client(self, service: str = "s3", key: str = "test", secret: str = "test"):
        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1", aws_access_key_id=key,
                            aws_secret_access_key=secret)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)


@pytest.fixture
def moto():
    servers: list[Moto] = []

    def start(**env: str) -> Moto:
        servers.append(Moto(**env))
        return servers[-1]

    yield start
    for m in servers:
        m.stop()


@pytest.fixture
def running():
    """Start stores on any config; all stopped at teardown."""
    stops = []

    def start(cfg: StoreConfig):
        address, _, stop = start_store(cfg)
        stops.append(stop)
        channel = grpc.insecure_channel(address)
        stops.append(channel.close)
        return store_pb2_grpc.AdapterStoreStub(channel), address

    yield start
    for stop in reversed(stops):
        stop()


class Scripted(BaseHTTPRequestHandler):
    """Answers every S3 request with one fixed error (``server.answer = (status, code)``)."""

    protocol_version = "HTTP/1.1"  # answers botocore's "Expect: 100-continue" at once instead of after its timeout

    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, code = self.server.answer  # type: ignore[attr-defined]
        body = b"" if self.command == "HEAD" else (
            f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>scripted {code}</Message></Error>".encode())
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _reply

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def failed(call, code: grpc.StatusCode, *needles: str) -> str:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, (err.value.code(), err.value.details())
    for needle in needles:
        assert needle in err.value.details(), (needle, err.value.details())
    return err.value.details()


def push(stub, src, name: str) -> store_pb2.PushResponse:
    """Every file of ``src`` over a raw Push stream (no MissingBlobs, no client-side retries)."""
    files = sorted(src.iterdir(), key=lambda p: (p.name != "adapter_config.json", p.name))
    entries = [common_pb2.FileEntry(name=p.name, size=p.stat().st_size,
                                    sha256=hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]

    def requests():
        yield store_pb2.PushRequest(header=store_pb2.PushHeader(name=name, files=entries))
        for p in files:
            yield store_pb2.PushRequest(chunk=store_pb2.Chunk(file=p.name, offset=0, data=p.read_bytes()))

    return stub.Push(requests(), timeout=60)


def fetch(stub, ref: str) -> list:
    return list(stub.Fetch(store_pb2.FetchRequest(ref=ref), timeout=60))


# ---- through a real store over gRPC --------------------------------------------------------------------------------


def test_deleted_bucket_is_failed_precondition_on_push_and_pull(store, s3_client, tmp_path):
    stub = store_pb2_grpc.AdapterStoreStub(grpc.insecure_channel(store.address))
    bucket = store.config.s3.bucket
    push(stub, write_adapter(tmp_path / "v1", seed=1), "t/a")
    for obj in s3_client.list_objects_v2(Bucket=bucket).get("Contents", []):
        s3_client.delete_object(Bucket=bucket, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=bucket)

    needles = (f"bucket '{bucket}' does not exist", "create it or fix --bucket", store.config.s3.endpoint_url)
    failed(lambda: push(stub, write_adapter(tmp_path / "v2", seed=2), "t/a"),
           grpc.StatusCode.FAILED_PRECONDITION, *needles)
    failed(lambda: fetch(stub, "t/a@1"), grpc.StatusCode.FAILED_PRECONDITION, *needles)
    # the client's own push (MissingBlobs first, then the files) fails the same way
    with pytest.raises(AdapterFleetError) as err:
        store.client().push_dir(write_adapter(tmp_path / "v3", seed=3), "t/a")
    assert err.value.code == "FAILED_PRECONDITION"

    # the store kept serving: metadata from Redis, and pushes again once the bucket is back
    assert stub.Resolve(store_pb2.ResolveRequest(ref="t/a"), timeout=10).manifest.version == 1
    s3_client.create_bucket(Bucket=bucket)
    assert push(stub, write_adapter(tmp_path / "v2", seed=2), "t/a").manifest.version == 2
    assert len(fetch(stub, "t/a@2")) > 1


def test_stopped_s3_endpoint_is_unavailable_on_push_and_pull(moto, running, store_config, tmp_path):
    s3 = moto()
    cfg = replace(store_config, s3=replace(store_config.s3, endpoint_url=s3.endpoint))
    stub, _ = running(cfg)
    push(stub, write_adapter(tmp_path / "v1", seed=1), "t/a")
    s3.stop()

    needles = (s3.endpoint, f"bucket '{cfg.s3.bucket}'", "unreachable", "check --s3-endpoint")
    started = time.monotonic()
    failed(lambda: push(stub, write_adapter(tmp_path / "v2", seed=2), "t/a"), grpc.StatusCode.UNAVAILABLE,
           *needles)
    failed(lambda: fetch(stub, "t/a@1"), grpc.StatusCode.UNAVAILABLE, *needles)
    failed(lambda: stub.MissingBlobs(store_pb2.MissingBlobsRequest(sha256=[SHA]), timeout=30),
           grpc.StatusCode.UNAVAILABLE, *needles)
    assert time.monotonic() - started < 30  # a refused connection fails fast, retries included
    # what needs only Redis still works
    assert stub.Resolve(store_pb2.ResolveRequest(ref="t/a"), timeout=10).manifest.version == 1


def test_refused_credentials_are_permission_denied(moto, running, store_config, tmp_path):
    # the first 7 calls are free; after them moto enforces IAM: an admin, and a user with no object access
    s3 = moto(INITIAL_NO_AUTH_ACTION_COUNT="7")
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    s3.client().create_bucket(Bucket=bucket)
    iam, keys = s3.client("iam"), {}
    for user, resource in (("admin", "*"), ("bucket-only", f"arn:aws:s3:::{bucket}")):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName="p", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": resource}]}))
        keys[user] = iam.create_access_key(UserName=user)["AccessKey"]

    def config(user: str) -> StoreConfig:
        key = keys[user]
        return replace(store_config, s3=replace(store_config.s3, endpoint_url=s3.endpoint, bucket=bucket,
                                                access_key_id=key["AccessKeyId"],
                                                secret_access_key=key["SecretAccessKey"]))

    admin, _ = running(config("admin"))
    push(admin, write_adapter(tmp_path / "v1", seed=1), "t/a")
    limited, _ = running(config("bucket-only"))  # same Redis prefix: sees t/a@1, cannot read its blobs
    needles = (s3.endpoint, f"bucket '{bucket}'", "denied access", "check the credentials")
    failed(lambda: push(limited, write_adapter(tmp_path / "v2", seed=2), "t/a"),
           grpc.StatusCode.PERMISSION_DENIED, *needles)
    failed(lambda: fetch(limited, "t/a@1"), grpc.StatusCode.PERMISSION_DENIED, *needles)
    assert len(fetch(admin, "t/a@1")) > 1


# ---- start-up ------------------------------------------------------------------------------------------------------


def test_unreachable_endpoint_at_start_up_is_unavailable(store_config):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    cfg = replace(store_config, s3=replace(store_config.s3, endpoint_url=endpoint))
    with pytest.raises(Unavailable) as err:
        make_blob_store(cfg)
    assert endpoint in err.value.message and cfg.s3.bucket in err.value.message


@pytest.mark.parametrize("bucket", ["b", "Bucket", "my_bucket", "-abc", "abc-", "a..b", "192.168.1.1", "x" * 64,
                                    "xn--abc", "abc-s3alias", "buck et", "bück"])
def test_invalid_bucket_name_is_refused_before_any_request(bucket, store_config):
    # an endpoint nobody listens on: a name check that made a request would fail with Unavailable instead
    cfg = replace(store_config, s3=replace(store_config.s3, endpoint_url=f"http://127.0.0.1:{free_port()}",
                                           bucket=bucket))
    with pytest.raises(InvalidArgument) as err:
        make_blob_store(cfg)
    assert "invalid S3 bucket name" in err.value.message and "3-63 characters" in err.value.message


@pytest.mark.parametrize("bucket", ["abc", "my-bucket.v2", "0" * 63, "a1.b2-c3"])
def test_valid_bucket_names(bucket):
    assert validate_bucket_name(bucket) == bucket


# ---- an endpoint that answers with errors ------------------------------------------------------------------------


def scripted_store(server, *, retries: bool) -> tuple[S3BlobStore, str]:
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    cfg = S3Config(endpoint_url=endpoint, bucket="t-scripted", access_key_id="test", secret_access_key="test")
    client = make_s3_client(cfg)
    if not retries:  # botocore backs off up to seconds per retry: the translation, not the backoff, is tested here
        client = boto3.client("s3", endpoint_url=endpoint, region_name=cfg.region, aws_access_key_id="test",
                              aws_secret_access_key="test",
                              config=BotoConfig(retries={"total_max_attempts": 1, "mode": "standard"}))
    return S3BlobStore(cfg, client=client), endpoint


@pytest.mark.parametrize("status, code, expected", [
    (503, "SlowDown", Unavailable),
    (500, "InternalError", Unavailable),
    (429, "TooManyRequests", Unavailable),
    (403, "AccessDenied", PermissionDenied),
    (404, "NoSuchBucket", FailedPrecondition),
    (400, "SomethingNew", FailedPrecondition),
])
def test_s3_error_answers_are_typed(scripted, status, code, expected):
    scripted.answer = (status, code)
    blobs, endpoint = scripted_store(scripted, retries=False)
    try:
        calls = {"read": lambda: list(blobs.read(SHA)), "list": lambda: list(blobs.list()),
                 "delete": lambda: blobs.delete(SHA), "abort uploads": lambda: blobs.abort_stale_uploads(0)}
        if status != 404:  # HEAD has no body: a 404 there is an absent blob, not a missing bucket
            calls["exists"] = lambda: blobs.exists(SHA)

        def store_one() -> None:
            writer = blobs.writer(hashlib.sha256(b"x").hexdigest(), 1)
            writer.write(b"x")
            writer.commit()

        calls["write"] = store_one
        for what, call in calls.items():
            with pytest.raises(expected) as err:
                call()
            assert endpoint in err.value.message and "t-scripted" in err.value.message, (what, err.value.message)
    finally:
        blobs.close()


def test_throttling_that_outlasts_the_retries_is_unavailable(scripted):
    scripted.answer = (503, "SlowDown")
    blobs, endpoint = scripted_store(scripted, retries=True)  # the store's own client, retries and all
    try:
        with pytest.raises(Unavailable) as err:
            blobs.exists(SHA)
        assert "throttling" in err.value.message and endpoint in err.value.message
    finally:
        blobs.close()
