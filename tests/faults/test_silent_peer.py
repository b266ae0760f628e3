"""A peer that goes silent: a store host that dies, or a network that drops everything, without a reset or a close.

What must hold: a call on a connection to it fails UNAVAILABLE once a keepalive ping goes unanswered, instead of
waiting for ever (a worker's fetch without a deadline did, and every request for that adapter with it); and our
servers accept the pings of a client that keeps a long call open with nothing to say (gRPC's default answers pings
more often than every 5 minutes with GOAWAY, which cut such calls off).
"""

from __future__ import annotations

import threading
import time

from adapterfleet.common.channel import CHANNEL_OPTIONS, KEEPALIVE_S, PING_PERMIT_S, keepalive_options
from adapterfleet.common.errors import Unavailable
from adapterfleet.common.security import open_channel
from adapterfleet.store.client import StoreClient
from tests.faults.netcut import NetCut
from tests.helpers.synthetic import write_adapter

HANG_GUARD_S = 30.0  # a call still waiting after this is taken as waiting for ever


def client_pinging_every(address: str, seconds: float) -> StoreClient:
    options = list({**dict(CHANNEL_OPTIONS), **dict(keepalive_options(seconds, seconds))}.items())
    return StoreClient(address, channel=open_channel(address, options=options))


def in_thread(fn):
    """Run ``fn`` in a thread; returns (finished, what it returned or raised)."""
    out: list[object] = []

    def run():
        try:
            out.append(fn())
        except Exception as err:  # noqa: BLE001 - handed to the test, which asserts on it
            out.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    return (not thread.is_alive()), (out[0] if out else None)


def test_every_channel_pings_while_calls_are_open_and_servers_accept_those_pings():
    options = dict(CHANNEL_OPTIONS)  # clients (the worker's store channel among them) and servers alike
    assert options["grpc.keepalive_time_ms"] == KEEPALIVE_S * 1000 and options["grpc.keepalive_timeout_ms"] > 0
    assert options["grpc.http2.max_pings_without_data"] == 0  # a silent call stays watched
    assert options["grpc.http2.min_ping_interval_without_data_ms"] <= KEEPALIVE_S * 1000


def test_a_fetch_from_a_store_that_went_silent_fails_unavailable_instead_of_waiting_for_ever(store, tmp_path):
    key = str(store.client().push_dir(write_adapter(tmp_path / "a"), "acme/silent").manifest.key)
    cut = NetCut(int(store.address.rsplit(":", 1)[1])).up()
    client = client_pinging_every(f"127.0.0.1:{cut.port}", 1.0)
    try:
        assert str(client.resolve(key).key) == key  # the connection is up and used
        cut.silence()
        finished, outcome = in_thread(lambda: client.fetch(key))
        assert finished, "the fetch still waits on a store that went silent"
        assert isinstance(outcome, Unavailable), outcome
    finally:
        cut.down()
        client.close()


def test_a_silent_watch_with_a_client_pinging_often_is_not_cut_off(store, tmp_path):
    """A watch with no event for a while: the client pings every 1.5 s meanwhile, and the next event still arrives."""
    every = 1.5
    assert every >= PING_PERMIT_S
    client = client_pinging_every(store.address, every)
    watch = client.watch(cursor="$")
    pushes: list[threading.Timer] = []

    def push_later(delay: float, name: str, seed: int) -> None:
        pushes.append(threading.Timer(delay, lambda: store.client().push_dir(write_adapter(tmp_path / name, seed=seed),
                                                                             f"acme/{name}")))
        pushes[-1].start()

    try:
        push_later(1.0, "first", 0)
        finished, event = in_thread(lambda: next(watch))  # the watch is open once its first event arrives
        assert finished and not isinstance(event, Exception), event
        time.sleep(4 * every + 1)  # four pings with no data: a server at gRPC's defaults answers with GOAWAY
        push_later(0.1, "second", 1)
        finished, event = in_thread(lambda: next(watch))
        assert finished and not isinstance(event, Exception), event
        assert event.name == "acme/second", event
    finally:
        for push in pushes:
            push.join(HANG_GUARD_S)  # its reply read before the fixture closes the store's clients
        watch.close()
        client.close()
