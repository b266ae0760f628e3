"""Lookaside routing: the router's Route answer and the SDK's direct clients (FleetClient/AsyncFleetClient with
direct=True), over a real store, real workers (tiny Llama, PEFT adapters) and a real router on port 0."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import warnings

import grpc
import pytest

from adapterfleet.common.errors import NotFound
from adapterfleet.common.tiers import tier_from_pb
from adapterfleet.router.config import RouterConfig
from adapterfleet.sdk.fleet import FleetClient
from adapterfleet.sdk.fleet_aio import AsyncFleetClient
from adapterfleet.v1 import router_pb2, router_pb2_grpc
from adapterfleet.worker.config import WorkerConfig
from tests.helpers.models import make_base_model, make_peft_adapter
from tests.helpers.servers import WorkerHandle, start_router

FAST = dict(announce_every_s=0.2, announce_ttl_s=2.0)
PROMPT = [5, 6, 7, 8]
ROUTE_TTL_S = 60.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lookaside")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = make_base_model("llama", root / "base", seed=0)
        adapters = [make_peft_adapter(base, root / f"a{i}", seed=i, r=4, target_modules=["q_proj", "v_proj"])
                    for i in range(3)]
    return base, adapters


def wait_for(cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


class Fleet:
    def __init__(self, store, base, tmp_path, workers: int = 3):
        self.store, self.base, self.tmp = store, base, tmp_path
        self.workers = [self.add_worker(i) for i in range(workers)]
        # routes live long here, so that what a test sees does not depend on how fast a busy box runs it
        cfg = RouterConfig(store=store.address, poll_s=0.1, route_ttl_s=ROUTE_TTL_S)
        self.address, self.router, self._stop = start_router(cfg)
        wait_for(lambda: len(self.router.membership.views()) == len(self.workers))

    def add_worker(self, i: int) -> WorkerHandle:
        return WorkerHandle(WorkerConfig(base_model=str(self.base), store=self.store.address, max_slots=4,
                                         disk_dir=str(self.tmp / f"w{i}"), **FAST))

    def route(self, ref: str, routing_key: str = "", exclude=(), refresh: bool = False) -> router_pb2.RouteResponse:
        with grpc.insecure_channel(self.address) as channel:
            return router_pb2_grpc.RouterStub(channel).Route(router_pb2.RouteRequest(
                adapter=ref, routing_key=routing_key, exclude=list(exclude), refresh=refresh), timeout=30)

    def by_address(self, address: str) -> WorkerHandle:
        [w] = [w for w in self.workers if w.address == address]
        return w

    def close(self) -> None:
        self._stop()
        for w in self.workers:
            w.stop()


@pytest.fixture
def fleet(store, tiny, tmp_path):
    base, adapters = tiny
    client = store.client()
    keys = [str(client.push_dir(a, f"acme/a{i}").manifest.key) for i, a in enumerate(adapters)]
    f = Fleet(store, base, tmp_path)
    f.keys = keys
    yield f
    f.close()


def test_route_answers_the_key_and_every_healthy_worker_in_placement_order(fleet):
    answer = fleet.route("acme/a0")
    assert answer.adapter_key == fleet.keys[0]
    assert answer.ttl_seconds == pytest.approx(ROUTE_TTL_S)
    assert sorted(c.address for c in answer.candidates) == sorted(w.address for w in fleet.workers)
    assert {c.worker_id for c in answer.candidates} == {w.id for w in fleet.workers}
    # the answer counts as a request sent to its first candidate: an affinity miss, and the key expected there
    [counted] = [a for a in fleet.router.adapters.items() if a[0] == fleet.keys[0]]
    assert counted[1].misses == 1
    first = answer.candidates[0]
    views = {v.id: v for v in fleet.router.membership.views()}
    assert views[first.worker_id].resident.get(fleet.keys[0]) == "loading"
    assert views[first.worker_id].load >= 1  # a direct request the router never sees is on its load
    # once the adapter is held there, the next answer names it first, with its tier
    with FleetClient(first.address) as at_worker:
        at_worker.load_adapter(fleet.keys[0])
    wait_for(lambda: tier_from_pb(fleet.route("acme/a0").candidates[0].tier) == "active")
    assert fleet.route("acme/a0").candidates[0].worker_id == first.worker_id
    # excluded workers are left out
    assert first.worker_id not in {c.worker_id for c in fleet.route("acme/a0", exclude=[first.worker_id]).candidates}


def test_a_route_renewed_by_a_caller_that_still_uses_it_counts_no_request(fleet):
    # the caller reports the requests it sends on the answer; counting one for the answer too would put on the
    # worker a request that may never come
    before = fleet.router.requests
    answer = fleet.route("acme/a1", refresh=True)
    assert answer.adapter_key == fleet.keys[1] and len(answer.candidates) == len(fleet.workers)
    assert fleet.router.requests == before
    assert fleet.keys[1] not in dict(fleet.router.adapters.items())  # no affinity hit or miss, no heat
    views = {v.id: v for v in fleet.router.membership.views()}
    assert views[answer.candidates[0].worker_id].load == 0
    assert views[answer.candidates[0].worker_id].resident.get(fleet.keys[1]) == "loading"  # still sent there
    fleet.route("acme/a1")  # an ordinary answer counts its one request
    assert fleet.router.requests == before + 1


def test_route_for_an_unknown_adapter_is_not_found(fleet):
    with pytest.raises(grpc.RpcError) as err:
        fleet.route("acme/missing")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with FleetClient(fleet.address, direct=True) as client, pytest.raises(NotFound):
        client.generate(PROMPT, adapter="acme/missing", max_new_tokens=4)
    # a worker's address is no router: the error says which address to give
    with FleetClient(fleet.workers[0].address, direct=True) as client, pytest.raises(Exception) as err:
        client.score(PROMPT, adapter="acme/a0")
    assert err.value.code == "UNIMPLEMENTED" and "give a router's address" in str(err.value)


def test_direct_mode_gives_the_same_outputs_as_the_proxy(fleet):
    with FleetClient(fleet.address) as proxied, FleetClient(fleet.address, direct=True) as direct:
        for ref in ("acme/a0", "acme/a1", ""):
            via_router = proxied.generate(PROMPT, adapter=ref, max_new_tokens=8, logprobs=True, stop_ids=[127])
            straight = direct.generate(PROMPT, adapter=ref, max_new_tokens=8, logprobs=True, stop_ids=[127])
            assert straight.token_ids == via_router.token_ids and len(straight.token_ids) == 8
            assert straight.text == via_router.text and straight.adapter_key == via_router.adapter_key
            assert [t.chosen.logprob for t in straight.logprobs] == pytest.approx(
                [t.chosen.logprob for t in via_router.logprobs])
            assert direct.score(PROMPT, adapter=ref).logprobs == pytest.approx(
                proxied.score(PROMPT, adapter=ref).logprobs)
        for _ in range(5):  # the route is reused for its TTL: the router is asked once per key
            direct.generate(PROMPT, adapter="acme/a2", max_new_tokens=2)
        assert direct._direct.route_calls == 4
    # every request reached the router's counts: 6 proxied, and 11 direct ones (Route answers, and the callers'
    # reports, the last ones sent at close)
    assert fleet.router.requests == 6 + 11


def test_direct_async_client_gives_the_same_outputs(fleet):
    with FleetClient(fleet.address) as proxied:
        expected = proxied.generate(PROMPT, adapter="acme/a1", max_new_tokens=8, stop_ids=[127])
        expected_score = proxied.score(PROMPT, adapter="acme/a1")

    async def run():
        async with AsyncFleetClient(fleet.address, direct=True) as client:
            chunks = [c async for c in client.stream(PROMPT, adapter="acme/a1", max_new_tokens=8, stop_ids=[127])]
            whole = await client.generate(PROMPT, adapter="acme/a1", max_new_tokens=8, stop_ids=[127])
            scored = await client.score(PROMPT, adapter="acme/a1")
            return chunks, whole, scored

    chunks, whole, scored = asyncio.run(run())
    assert tuple(t for c in chunks for t in c.token_ids) == expected.token_ids == whole.token_ids
    assert scored.logprobs == pytest.approx(expected_score.logprobs)


def test_the_async_client_sends_deferred_outcomes_while_it_stays_open(fleet):
    """An outcome that came too soon after the last report waits for the client's alarm (a thread of its own, not a
    timer in the event loop) and reaches the router within about REPORT_EVERY_S, not only at close."""
    async def run() -> tuple[int, int]:
        async with AsyncFleetClient(fleet.address, direct=True) as client:
            before = fleet.router.requests
            for _ in range(3):  # counted by Route; sent at once (the first report); deferred: too soon after it
                await client.generate(PROMPT, adapter="acme/a0", max_new_tokens=2)
            deadline = time.monotonic() + 5
            while fleet.router.requests < before + 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            counted_open = fleet.router.requests - before
        return counted_open, fleet.router.requests - before

    counted_open, counted = asyncio.run(run())
    assert counted_open == 3 and counted == 3


def test_the_report_alarm_thread_ends_when_idle(fleet, monkeypatch):
    """The alarm's thread ends once it has had nothing to do for ALARM_IDLE_S, in a client that is still open."""
    from adapterfleet.sdk import direct_aio

    monkeypatch.setattr(direct_aio, "ALARM_IDLE_S", 0.3)

    def alarm_threads() -> int:
        return sum(t.name == "adapterfleet-route-reports" for t in threading.enumerate())

    async def run() -> tuple[int, int]:
        before = alarm_threads()  # another test's client may still have one
        client = AsyncFleetClient(fleet.address, direct=True)
        for _ in range(3):  # the third outcome is held back: the alarm starts
            await client.generate(PROMPT, adapter="acme/a1", max_new_tokens=2)
        started = alarm_threads() - before
        deadline = time.monotonic() + 5
        while alarm_threads() > before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        idle = alarm_threads() - before
        await client.close()
        return started, idle

    started, idle = asyncio.run(run())
    assert started == 1 and idle <= 0


def slow(worker: WorkerHandle, seconds: float = 0.05) -> None:
    """Each engine step of ``worker`` takes ``seconds`` longer, so a stream is surely mid-way when it dies."""
    worker.core.engine.on_step = lambda kind, rows, tokens: time.sleep(seconds)


@pytest.mark.parametrize("use_async", [False, True])
def test_a_worker_killed_mid_stream_continues_on_the_next_candidate_with_identical_greedy_tokens(fleet, use_async):
    with FleetClient(fleet.address) as proxied:
        expected = proxied.generate(PROMPT, adapter="acme/a0", max_new_tokens=24, stop_ids=[127]).token_ids
    victim = fleet.by_address(fleet.route("acme/a0").candidates[0].address)
    slow(victim)
    got: list[int] = []
    before = {w.id: w.core.engine.stats.requests for w in fleet.workers}

    def on_first_chunk() -> None:
        threading.Thread(target=victim.crash, daemon=True).start()

    if use_async:
        async def run():
            async with AsyncFleetClient(fleet.address, direct=True) as client:
                async for chunk in client.stream(PROMPT, adapter="acme/a0", max_new_tokens=24, timeout=60,
                                                    stop_ids=[127]):
                    if not got:
                        on_first_chunk()
                    got.extend(chunk.token_ids)
        asyncio.run(run())
    else:
        with FleetClient(fleet.address, direct=True) as client:
            for chunk in client.stream(PROMPT, adapter="acme/a0", max_new_tokens=24, timeout=60, stop_ids=[127]):
                if not got:
                    on_first_chunk()
                got.extend(chunk.token_ids)
    assert tuple(got) == expected
    others = [w for w in fleet.workers if w is not victim]
    assert sum(w.core.engine.stats.requests - before[w.id] for w in others) >= 1  # it continued elsewhere


def test_a_stale_route_is_refreshed(fleet):
    with FleetClient(fleet.address, direct=True) as client:
        first = client.generate(PROMPT, adapter="acme/a1", max_new_tokens=4)
        route = client._direct._cache.get("acme/a1", "", time.monotonic())  # what it cached
        assert route is not None and client._direct.route_calls == 1
        gone = fleet.by_address(route.candidates[0].address)
        gone.crash()  # its route is cached and fresh (60 s): the next call finds the worker gone
        assert client.generate(PROMPT, adapter="acme/a1", max_new_tokens=4).token_ids == first.token_ids
        # the stale route was dropped; the next call asks again, leaving out the worker that failed (the router
        # may not know yet that it is gone), and the fresh answer is cached
        assert client.generate(PROMPT, adapter="acme/a1", max_new_tokens=4).token_ids == first.token_ids
        assert client._direct.route_calls == 2
        fresh = client._direct._cache.get("acme/a1", "", time.monotonic())
        assert fresh is not None and fresh is not route
        assert gone.id not in {c.worker_id for c in fresh.candidates}
    # once the registry lets it go, every caller's route leaves it out
    wait_for(lambda: all(v.id != gone.id for v in fleet.router.membership.views()), timeout=5)
    assert gone.id not in {c.worker_id for c in fleet.route("acme/a1").candidates}


def test_a_request_error_is_not_retried_on_another_worker(fleet):
    with FleetClient(fleet.address, direct=True) as client:
        with pytest.raises(Exception) as err:
            client.generate(PROMPT, adapter="acme/a0", max_new_tokens=4, temperature=float("nan"))
        assert type(err.value).__name__ == "InvalidArgument"
    assert fleet.router.retries == 0


def test_the_cli_generates_and_scores_with_direct(fleet, capsys):
    from adapterfleet.cli.main import main

    common = ["--router", fleet.address, "--adapter", "acme/a2", "--prompt-ids", "5,6,7,8", "--json"]
    assert main(["generate", *common, "--max-new-tokens", "6", "--stop-ids", "127"]) == 0
    proxied = json.loads(capsys.readouterr().out)
    assert main(["generate", *common, "--max-new-tokens", "6", "--stop-ids", "127", "--direct"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert direct["token_ids"] == proxied["token_ids"] and len(direct["token_ids"]) == 6
    assert direct["adapter_key"] == fleet.keys[2]
    assert main(["score", *common]) == 0
    proxied = json.loads(capsys.readouterr().out)
    assert main(["score", *common, "--direct"]) == 0
    assert json.loads(capsys.readouterr().out)["logprobs"] == pytest.approx(proxied["logprobs"])
    assert fleet.router.requests == 4  # 2 proxied; 2 direct, counted by their Route answers
    # --direct needs a router to ask
    assert main(["score", "--worker", fleet.workers[0].address, "--prompt-ids", "5,6", "--direct"]) != 0
    assert "--direct asks a router where to go" in capsys.readouterr().err
