"""A fleet with tokens on: one store, one worker, one router (in-process, real gRPC on port 0, plaintext for
speed; TLS is tests/security_tls/), a tiny Llama and two tenants' PEFT adapters."""

from __future__ import annotations

import contextlib
import time
import uuid
import warnings

import grpc
import pytest

from adapterfleet.common.auth_config import AuthConfig, TenantLimits
from adapterfleet.common.security import open_channel
from adapterfleet.common.security_config import ClientSecurity
from adapterfleet.common.tokens import generate_issuer_keypair, mint_token
from adapterfleet.router.config import RouterConfig
from adapterfleet.store.client import StoreClient
from adapterfleet.store.config import Limits, S3Config, StoreConfig
from adapterfleet.store.registry import RedisRegistry
from adapterfleet.store.server import make_redis
from adapterfleet.store.workers import WorkerRecord
from adapterfleet.v1 import worker_pb2, worker_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import ServerThread, WorkerHandle, start_router, start_store

PROMPT = [1, 5, 9, 3]


class Fleet:
    def __init__(self, issuer, root, redis_url: str, s3_url: str):
        self.issuer = issuer
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        store_cfg = StoreConfig(port=0, redis_url=redis_url, redis_prefix=prefix, data_dir=str(root / "store"),
                                s3=S3Config(endpoint_url=s3_url, bucket=f"t-{uuid.uuid4().hex[:12]}",
                                            access_key_id="test", secret_access_key="test"),
                                blob_cache_bytes=0, limits=Limits(max_rank=64), auth=issuer.auth())
        self.redis_url, self.prefix = redis_url, prefix
        self.store, _, self._stop_store = start_store(store_cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = make_base_model("llama", root / "base", seed=0)
            adapters = [make_peft_adapter(base, root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"])
                        for i in range(2)]
        ops = self.client(["*"], ["read", "push", "admin"])
        ops.push_dir(adapters[0], "acme/a")
        ops.push_dir(adapters[1], "beta/b")
        self.worker_token = mint_token(issuer.key, ["*"], ["read", "worker"], 600, worker_id="worker-1")
        self.worker = WorkerHandle(WorkerConfig(
            base_model=str(base), store=self.store, max_slots=2, disk_dir=str(root / "w"), announce_every_s=0.2,
            announce_ttl_s=2.0, auth=self.auth_of(), security=ClientSecurity(token=self.worker_token.token)))
        self.router, self.router_core, self._stop_router = start_router(RouterConfig(
            store=self.store, poll_s=0.1, auth=self.auth_of(),
            security=issuer.security(["*"], ["read", "serve"])))
        wait_for(lambda: [w.id for w in self.router_core.membership.views()] == ["worker-1"])

    def auth_of(self) -> AuthConfig:
        return self.issuer.auth()

    def client(self, tenants, scopes) -> StoreClient:
        return StoreClient(self.store, security=self.issuer.security(tenants, scopes), timeout=20)

    def generate(self, address: str, adapter: str, token: str | None):
        channel = open_channel(address, ClientSecurity(token=token))
        try:
            stream = worker_pb2_grpc.WorkerStub(channel).Generate(
                worker_pb2.GenerateRequest(adapter=adapter, prompt_ids=PROMPT, max_new_tokens=3), timeout=60)
            return [t for m in stream for t in m.token_ids]
        finally:
            channel.close()

    def score(self, address: str, adapter: str, token: str | None):
        channel = open_channel(address, ClientSecurity(token=token))
        try:
            return list(worker_pb2_grpc.WorkerStub(channel).Score(
                worker_pb2.ScoreRequest(adapter=adapter, token_ids=PROMPT), timeout=60).logprobs)
        finally:
            channel.close()

    def close(self) -> None:
        self._stop_router()
        self.worker.stop()
        self._stop_store()


def wait_for(cond, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def code_of(fn) -> str:
    try:
        fn()
    except grpc.RpcError as err:
        return err.code().name
    return "OK"


@pytest.fixture(scope="module")
def fleet(issuer, redis_server, s3_server, tmp_path_factory):
    f = Fleet(issuer, tmp_path_factory.mktemp("tokfleet"), redis_server.url, s3_server)
    yield f
    f.close()


def test_router_and_worker_serve_a_tenant_only_its_own_adapters(fleet):
    acme = fleet.issuer.token(["acme"], ["serve"])
    for address in (fleet.router, fleet.worker.address):
        assert len(fleet.generate(address, "acme/a", acme)) == 3
        assert len(fleet.score(address, "acme/a", acme)) == len(PROMPT) - 1
        assert code_of(lambda a=address: fleet.generate(a, "beta/b", acme)) == "PERMISSION_DENIED"
        assert code_of(lambda a=address: fleet.score(a, "beta/b", acme)) == "PERMISSION_DENIED"
        assert code_of(lambda a=address: fleet.generate(a, "acme/a", None)) == "UNAUTHENTICATED"
        assert code_of(lambda a=address: fleet.score(a, "acme/a", None)) == "UNAUTHENTICATED"
    reader = fleet.issuer.token(["acme"], ["read"])  # a read token cannot generate
    assert code_of(lambda: fleet.generate(fleet.router, "acme/a", reader)) == "PERMISSION_DENIED"


def test_worker_operator_calls_need_admin(fleet):
    acme = open_channel(fleet.worker.address, fleet.issuer.security(["acme"], ["serve"]))
    stub = worker_pb2_grpc.WorkerStub(acme)
    assert code_of(lambda: stub.UnloadAdapter(worker_pb2.UnloadAdapterRequest(ref="acme/a"), timeout=10)) \
        == "PERMISSION_DENIED"
    assert code_of(lambda: stub.Stats(worker_pb2.StatsRequest(), timeout=10)) == "PERMISSION_DENIED"
    assert code_of(lambda: stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref="beta/b"), timeout=10)) \
        == "PERMISSION_DENIED"
    # loading pinned is pinning (never evicted): an operator's call, as Pin is
    assert code_of(lambda: stub.LoadAdapter(worker_pb2.LoadAdapterRequest(ref="acme/a", pin=True), timeout=10)) \
        == "PERMISSION_DENIED"
    acme.close()
    ops = open_channel(fleet.worker.address, fleet.issuer.security(["*"], ["admin"]))
    assert worker_pb2_grpc.WorkerStub(ops).Stats(worker_pb2.StatsRequest(), timeout=10).base_model
    resident = worker_pb2_grpc.WorkerStub(ops).ListResident(worker_pb2.ListResidentRequest(), timeout=10).adapters
    assert not any(a.pinned for a in resident)
    ops.close()


def test_the_router_forwards_the_callers_token(fleet, tmp_path):
    """A caller signed by a key the router trusts but the worker does not: if the router sent its own token, the
    worker would serve; it refuses, so the worker judged the caller's own token."""
    generate_issuer_keypair(tmp_path / "k2", tmp_path / "k2.pub")
    thread = ServerThread()
    from adapterfleet.router.server import create_router_server

    async def build():
        router = create_router_server(RouterConfig(
            store=fleet.store, poll_s=0.1, security=fleet.issuer.security(["*"], ["read", "serve"]),
            auth=AuthConfig(public_keys=(fleet.issuer.public, tmp_path / "k2.pub"))))
        await router.start()
        return router

    router = thread.run(build())
    try:
        address = f"127.0.0.1:{router.port}"
        wait_for(lambda: len(router.core.membership.views()) == 1)
        stranger = mint_token(tmp_path / "k2", ["acme"], ["serve"], 600).token
        assert code_of(lambda: fleet.generate(address, "acme/a", stranger)) == "UNAUTHENTICATED"
        assert len(fleet.generate(address, "acme/a", fleet.issuer.token(["acme"], ["serve"]))) == 3
    finally:
        thread.run(router.stop(0))
        thread.close()


def test_the_router_ignores_records_no_worker_token_announced(fleet):
    """A record written around the registry's checks (straight into Redis, as a forged Announce would have) is
    never routed to: it carries no verified token id."""
    thread = ServerThread()

    async def forge():
        client = make_redis(fleet.redis_url)
        await RedisRegistry(client, fleet.prefix).announce(
            WorkerRecord(id="evil", address="127.0.0.1:9", capacity=64, announced_by=""), ttl=30)
        await client.aclose()

    thread.run(forge())
    thread.close()
    records = []
    wait_for(lambda: records.append(1) or len(records) > 10)  # several membership polls (0.1 s)
    assert [w.id for w in fleet.router_core.membership.views()] == ["worker-1"]
    acme = fleet.issuer.token(["acme"], ["serve"])
    for _ in range(5):
        assert len(fleet.generate(fleet.router, "acme/a", acme)) == 3


def test_a_revoked_token_is_refused_by_router_and_worker(fleet):
    minted = mint_token(fleet.issuer.key, ["acme"], ["serve"], 600)
    assert len(fleet.generate(fleet.router, "acme/a", minted.token)) == 3
    ops = fleet.client(["*"], ["admin"])
    ops.revoke_token(minted.id, minted.expires)
    ops.close()
    wait_for(lambda: code_of(lambda: fleet.generate(fleet.router, "acme/a", minted.token)) == "UNAUTHENTICATED")
    wait_for(lambda: code_of(lambda: fleet.generate(fleet.worker.address, "acme/a", minted.token))
             == "UNAUTHENTICATED")


def test_the_sdk_sends_its_token_and_gets_typed_errors(fleet):
    from adapterfleet import AdapterStore, FleetClient, PermissionDenied, Unauthenticated

    acme = fleet.issuer.token(["acme"], ["serve", "read"])
    with FleetClient(fleet.router, token=acme) as client:
        assert len(client.generate(PROMPT, adapter="acme/a", max_new_tokens=2).token_ids) == 2
        with pytest.raises(PermissionDenied, match="beta"):
            client.generate(PROMPT, adapter="beta/b", max_new_tokens=2)
    with FleetClient(fleet.router) as anonymous, pytest.raises(Unauthenticated):
        anonymous.generate(PROMPT, adapter="acme/a", max_new_tokens=2)
    store = AdapterStore(fleet.store, token=acme)
    assert [a.name for a in store.adapters()] == ["acme/a"]
    with pytest.raises(PermissionDenied):
        store.resolve("beta/b")
    store.close()


@contextlib.contextmanager
def http_router(fleet, limits: TenantLimits | None = None):
    """Another router of the fleet, with the HTTP gateway on; yields (router, base URL)."""
    from adapterfleet.router.server import create_router_server

    thread = ServerThread()

    async def build():
        router = create_router_server(RouterConfig(
            store=fleet.store, poll_s=0.1, http_port=0, security=fleet.issuer.security(["*"], ["read", "serve"]),
            auth=fleet.issuer.auth(limits)))
        await router.start()
        return router

    router = thread.run(build())
    try:
        wait_for(lambda: len(router.core.membership.views()) == 1)
        yield router, f"http://127.0.0.1:{router.http_port}"
    finally:
        thread.run(router.stop(0))
        thread.close()


def test_the_http_gateway_needs_the_callers_token(fleet):
    import httpx

    with http_router(fleet) as (_, url):
        body = {"model": "acme/a", "prompt": PROMPT, "max_tokens": 2}
        acme = {"Authorization": f"Bearer {fleet.issuer.token(['acme'], ['serve'])}"}
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.post(f"{url}/v1/completions", json=body, headers=acme, timeout=60).status_code == 200
        r = httpx.post(f"{url}/v1/completions", json={**body, "model": "beta/b"}, headers=acme, timeout=60)
        assert r.status_code == 403
        models = [m["id"] for m in httpx.get(f"{url}/v1/models", headers=acme, timeout=30).json()["data"]]
        assert "acme/a" in models and not any(m.startswith("beta/") for m in models)
        pusher = {"Authorization": f"Bearer {fleet.issuer.token(['acme'], ['push'])}"}
        assert httpx.get(f"{url}/v1/models", headers=pusher, timeout=30).status_code == 403


def test_router_rate_limit_over_grpc_and_http(fleet):
    import httpx

    with http_router(fleet, TenantLimits(requests_per_s=0.01, burst=2)) as (router, url):
        acme = fleet.issuer.token(["acme"], ["serve"])
        address = f"127.0.0.1:{router.port}"
        assert [code_of(lambda: fleet.score(address, "acme/a", acme)) for _ in range(3)] == \
            ["OK", "OK", "RESOURCE_EXHAUSTED"]
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {acme}"}, timeout=30)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "retry in" in r.json()["error"]["message"]
        beta = fleet.issuer.token(["beta"], ["serve"])  # another tenant has its own bucket
        assert code_of(lambda: fleet.score(address, "beta/b", beta)) == "OK"


def _call_every_rpc(address: str, services) -> dict[str, str]:
    """Every RPC of ``services`` called with an empty request and no token: method -> status code."""
    from google.protobuf.message_factory import GetMessageClass

    channel = grpc.insecure_channel(address)
    out = {}
    for method in (m for s in services for m in s.methods):
        request = GetMessageClass(method.input_type)()
        factory = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                   (True, False): channel.stream_unary, (True, True): channel.stream_stream}[
            (method.client_streaming, method.server_streaming)]
        call = factory(f"/{method.containing_service.full_name}/{method.name}",
                       request_serializer=type(request).SerializeToString, response_deserializer=lambda b: b)
        out[method.name] = code_of(lambda c=call, m=method, r=request: (
            list(c(iter([r]) if m.client_streaming else r, timeout=10)) if m.server_streaming
            else c(iter([r]) if m.client_streaming else r, timeout=10)))
    channel.close()
    return out


def test_every_worker_and_router_rpc_without_a_token_is_unauthenticated(fleet):
    from adapterfleet.v1 import router_pb2

    worker = worker_pb2.DESCRIPTOR.services_by_name["Worker"]
    router = router_pb2.DESCRIPTOR.services_by_name["Router"]
    codes = _call_every_rpc(fleet.worker.address, [worker])
    assert set(codes.values()) == {"UNAUTHENTICATED"} and len(codes) >= 7, codes
    codes = _call_every_rpc(fleet.router, [worker, router])
    assert set(codes.values()) == {"UNAUTHENTICATED"} and len(codes) >= 8, codes


def test_route_reports_count_only_keys_the_caller_may_serve_and_the_router_routed(fleet):
    """A report is the caller's word: a tenant cannot heat up another tenant's adapter (the router would have
    workers load it with its own token), and no caller can make up keys for the router to keep."""
    from adapterfleet.v1 import router_pb2, router_pb2_grpc

    ops = open_channel(fleet.router, fleet.issuer.security(["*"], ["serve"]))
    beta_key = router_pb2_grpc.RouterStub(ops).Route(router_pb2.RouteRequest(adapter="beta/b"), timeout=30).adapter_key
    ops.close()
    def counted(key: str) -> int:
        c = dict(fleet.router_core.adapters).get(key)
        return c.hits + c.misses if c is not None else 0

    before = counted(beta_key)
    made_up = "acme/never@sha256:" + "cd" * 32
    acme = open_channel(fleet.router, fleet.issuer.security(["acme"], ["serve"]))
    router_pb2_grpc.RouterStub(acme).ReportRoutes(router_pb2.RouteReport(outcomes=[
        router_pb2.RouteOutcome(adapter_key=beta_key, worker_id="worker-1", requests=5000),
        router_pb2.RouteOutcome(adapter_key=made_up, worker_id="worker-1", requests=5000)]), timeout=10)
    acme.close()
    assert counted(beta_key) == before and made_up not in fleet.router_core.adapters
