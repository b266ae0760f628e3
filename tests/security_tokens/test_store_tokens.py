"""The store and its registry with tokens on (real store on port 0, real Redis and S3 server, real tokens)."""

from __future__ import annotations

import dataclasses
import itertools
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapterfleet.common.auth_config import TenantLimits
from adapterfleet.common.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from adapterfleet.common.security import open_channel
from adapterfleet.common.tokens import mint_token
from adapterfleet.store.client import StoreClient
from adapterfleet.v1 import registry_pb2, registry_pb2_grpc, store_pb2, store_pb2_grpc
from tests.helpers.servers import start_store
from tests.helpers.synthetic import write_adapter

ADMIN_SCOPES = ["read", "push", "admin", "serve"]


@pytest.fixture
def auth_store(store_config, issuer):
    started = []

    def start(limits: TenantLimits | None = None):
        cfg = dataclasses.replace(store_config, auth=issuer.auth(limits))
        address, _core, stop = start_store(cfg)
        started.append(stop)
        return address

    yield start
    for stop in started:
        stop()


@pytest.fixture
def clients(auth_store, issuer):
    address = auth_store()
    made = []

    def client(tenants, scopes, **kw) -> StoreClient:
        c = StoreClient(address, security=issuer.security(tenants, scopes, **kw), timeout=10)
        made.append(c)
        return c

    client.address = address
    yield client
    for c in made:
        c.close()


@pytest.fixture
def adapters(tmp_path):
    return [write_adapter(tmp_path / f"a{i}", seed=i) for i in range(3)]


def _empty_request(method):
    return getattr(store_pb2 if method.containing_service.name == "AdapterStore" else registry_pb2,
                   method.input_type.name)()


def test_every_rpc_without_a_token_is_unauthenticated_but_health_is_open(clients):
    channel = grpc.insecure_channel(clients.address)
    services = [store_pb2.DESCRIPTOR.services_by_name["AdapterStore"],
                registry_pb2.DESCRIPTOR.services_by_name["Registry"]]
    methods = [m for s in services for m in s.methods]
    assert len(methods) >= 13
    for method in methods:
        path = f"/{method.containing_service.full_name}/{method.name}"
        request = _empty_request(method)
        kind = (method.client_streaming, method.server_streaming)
        call = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream}[kind](
            path, request_serializer=type(request).SerializeToString, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            arg = iter([request]) if method.client_streaming else request
            result = call(arg, timeout=10)
            if method.server_streaming:
                list(result)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (method.name, err.value.details())
        assert "token" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:  # a token that is not one
        store_pb2_grpc.AdapterStoreStub(channel).ListAdapters(store_pb2.ListAdaptersRequest(), timeout=10,
                                                               metadata=[("authorization", "Bearer nope")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_a_tenant_cannot_touch_another_tenants_adapters(clients, adapters, tmp_path):
    ops = clients(["*"], ADMIN_SCOPES)
    ops.push_dir(adapters[0], "beta/secret", alias="prod")
    ops.push_dir(adapters[1], "acme/mine")
    acme = clients(["acme"], ["read", "push", "admin"])
    refused = [
        lambda: acme.push_dir(adapters[2], "beta/secret"),            # a new version of their adapter
        lambda: acme.push_dir(adapters[2], "beta/new"),
        lambda: acme.set_alias("beta/secret", "prod", ((1, 100),)),
        lambda: acme.delete_alias("beta/secret", "prod"),
        lambda: acme.yank("beta/secret", 1, force=True),
        lambda: acme.pull("beta/secret@prod", tmp_path / "stolen"),
        lambda: acme.fetch("beta/secret@1"),
        lambda: acme.resolve("beta/secret"),
        lambda: acme.list_versions("beta/secret"),
        lambda: next(iter(acme.watch("0", name="beta/secret"))),
        lambda: acme.collect_garbage(dry_run=True),                   # fleet-wide: service identities only
        lambda: acme.revoke_token("abc"),
    ]
    for i, op in enumerate(refused):
        with pytest.raises(PermissionDenied):
            op()
        assert not (tmp_path / "stolen").exists(), i
    assert [a.name for a in acme.list_adapters()] == ["acme/mine"]
    assert acme.list_adapters("beta/") == []
    # its own adapters: everything works
    assert acme.push_dir(adapters[2], "acme/mine").manifest.version == 2
    acme.set_alias("acme/mine", "prod", ((2, 100),))
    assert acme.resolve("acme/mine@prod").manifest.version == 2
    assert acme.pull("acme/mine@prod", tmp_path / "mine").version == 2
    # the victim's alias did not move
    assert ops.resolve("beta/secret@prod").manifest.version == 1


def test_watch_shows_a_tenant_only_its_own_events(clients, adapters):
    ops = clients(["*"], ADMIN_SCOPES)
    ops.push_dir(adapters[0], "beta/x")
    ops.set_alias("beta/x", "prod", ((1, 100),))
    ops.push_dir(adapters[1], "acme/y")
    acme = clients(["acme"], ["read"])
    seen = []
    done = threading.Event()

    def follow():
        for event in acme.watch("0"):
            seen.append(event.name)
            if event.name == "acme/y":
                done.set()
                return

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    assert done.wait(20)
    assert seen == ["acme/y"]  # beta's push and alias move came first, and were not shown


def test_scopes_are_enforced(clients, adapters):
    serve = clients(["acme"], ["serve"])
    with pytest.raises(PermissionDenied, match="push"):
        serve.push_dir(adapters[0], "acme/x")
    pusher = clients(["acme"], ["push"])
    pusher.push_dir(adapters[0], "acme/x")
    with pytest.raises(PermissionDenied, match="admin"):
        pusher.set_alias("acme/x", "prod", ((1, 100),))
    with pytest.raises(PermissionDenied, match="admin"):  # a push's alias moves it as SetAlias does
        pusher.push_dir(adapters[1], "acme/x", alias="prod")
    assert [m.version for m in clients(["acme"], ["read"]).list_versions("acme/x")[0]] == [1]  # nothing stored
    with pytest.raises(PermissionDenied, match="read"):
        pusher.list_adapters()
    assert serve.resolve("acme/x").manifest.version == 1  # serving callers resolve what they serve
    with pytest.raises(PermissionDenied):
        serve.fetch("acme/x")
    with pytest.raises(PermissionDenied, match="presigned URLs"):  # URLs hand out the bytes, as a fetch does
        serve.resolve("acme/x", direct=True)
    reader = clients(["acme"], ["read"])
    assert len(reader.resolve("acme/x", direct=True).urls) == len(reader.resolve("acme/x").manifest.files)


def test_expired_and_revoked_tokens_are_refused(clients, issuer):
    expired = StoreClient(clients.address, security=issuer.security(["acme"], ["read"], ttl_s=-120), timeout=10)
    with pytest.raises(Unauthenticated, match="expired"):
        expired.list_adapters()
    expired.close()
    minted = mint_token(issuer.key, ["acme"], ["read"], 600)
    victim = StoreClient(clients.address, security=dataclasses.replace(issuer.security(["acme"], ["read"]),
                                                                        token=minted.token), timeout=10)
    assert victim.list_adapters() == []
    with pytest.raises(PermissionDenied):  # only a service identity's admin may revoke
        clients(["acme"], ["admin"]).revoke_token(minted.id)
    cursor = clients(["*"], ["admin"]).revoke_token(minted.id, minted.expires)
    assert cursor
    with pytest.raises(Unauthenticated, match="revoked"):
        victim.list_adapters()
    victim.close()


def test_only_a_worker_token_announces_and_only_itself(clients, issuer):
    def announce(token: str, worker_id: str):
        channel = open_channel(clients.address, dataclasses.replace(issuer.security(["*"], ["read"]), token=token))
        try:
            return registry_pb2_grpc.RegistryStub(channel).Announce(
                registry_pb2.WorkerInfo(id=worker_id, address="10.0.0.66:1", announced_by="forged"), timeout=10)
        finally:
            channel.close()

    for token, worker_id in [(issuer.token(["*"], ["read", "serve", "admin"]), "w1"),      # no worker scope
                             (issuer.token(["*"], ["read", "worker"], worker_id="w1"), "w2"),  # another's id
                             (issuer.token(["acme"], ["push"]), "w1")]:
        with pytest.raises(grpc.RpcError) as err:
            announce(token, worker_id)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value.details()
    worker = mint_token(issuer.key, ["*"], ["read", "worker"], 600, worker_id="w1")
    announce(worker.token, "w1")
    channel = open_channel(clients.address, issuer.security(["*"], ["read"]))
    listed = registry_pb2_grpc.RegistryStub(channel).ListWorkers(registry_pb2.ListWorkersRequest(), timeout=10)
    assert [(w.id, w.announced_by) for w in listed.workers] == [("w1", worker.id)]  # not the forged value
    channel.close()
    tenant = open_channel(clients.address, issuer.security(["acme"], ["read"]))
    with pytest.raises(grpc.RpcError) as err:
        registry_pb2_grpc.RegistryStub(tenant).ListWorkers(registry_pb2.ListWorkersRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    tenant.close()


def test_tenant_rate_limit_is_resource_exhausted_with_a_retry_hint(auth_store, issuer, adapters):
    address = auth_store(TenantLimits(requests_per_s=0.5, burst=3, max_push_bytes=1000))
    channel = open_channel(address, issuer.security(["acme"], ["read", "push"]))
    stub = store_pb2_grpc.AdapterStoreStub(channel)
    codes = []
    for _ in itertools.repeat(None, 4):
        try:
            stub.ListAdapters(store_pb2.ListAdaptersRequest(), timeout=10)
            codes.append("OK")
        except grpc.RpcError as err:
            codes.append(err.code().name)
            last = err
    assert codes[:3] == ["OK"] * 3 and codes[3] == "RESOURCE_EXHAUSTED"
    trailing = dict(last.trailing_metadata())
    assert 1000 <= int(trailing["retry-after-ms"]) <= 2000
    assert "retry in" in last.details()
    # another tenant is not affected; service identities are not limited
    other = StoreClient(address, security=issuer.security(["beta"], ["read", "push"]), timeout=10)
    assert other.list_adapters() == []
    with pytest.raises(ResourceExhausted, match="per push"):  # push size per tenant
        other.push_dir(adapters[0], "beta/big")
    ops = StoreClient(address, security=issuer.security(["*"], ["read"]), timeout=10)
    for _ in range(5):
        ops.list_adapters()
    for c in (other, ops):
        c.close()
    channel.close()


def test_tenant_concurrent_streams_are_limited(auth_store, issuer, adapters):
    address = auth_store(TenantLimits(max_streams=1))
    ops = StoreClient(address, security=issuer.security(["*"], ["read", "push"]), timeout=10)
    ops.push_dir(adapters[0], "acme/x")
    channel = open_channel(address, issuer.security(["acme"], ["read"]))
    stub = store_pb2_grpc.AdapterStoreStub(channel)
    first = stub.Watch(store_pb2.WatchRequest(cursor="0"))
    assert next(first).name == "acme/x"  # the first stream is open on the server
    with pytest.raises(grpc.RpcError) as err:
        next(stub.Watch(store_pb2.WatchRequest(cursor="0"), timeout=10))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "streams open" in err.value.details()
    assert "retry-after-ms" in dict(err.value.trailing_metadata())
    beta = open_channel(address, issuer.security(["beta"], ["read"]))  # another tenant streams freely
    beta_watch = store_pb2_grpc.AdapterStoreStub(beta).Watch(store_pb2.WatchRequest(cursor="0"), timeout=20)
    ops.push_dir(adapters[1], "beta/y")
    assert next(beta_watch).name == "beta/y"
    beta_watch.cancel()
    beta.close()
    first.cancel()
    deadline = 50
    while True:  # the slot comes back once the server has seen the cancellation
        try:
            assert next(stub.Watch(store_pb2.WatchRequest(cursor="0"), timeout=10)).name == "acme/x"
            break
        except grpc.RpcError as again:
            assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            deadline -= 1
            assert deadline, "the stream slot was never released"
            threading.Event().wait(0.1)
    ops.close()
    channel.close()
